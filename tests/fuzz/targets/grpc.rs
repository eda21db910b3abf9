//! The gRPC messages a worker or coordinator receives, decoded by prost, and every tensor in
//! them through the codec. The first byte picks the message type; the rest is the message.

use adcnn_runtime::net::codec::{decode_f32, decode_input, decode_tile};
use adcnn_runtime::net::proto::{
    FromWorker, HelloRequest, OpenRequest, SectionChunk, Tensor, ToWorker, from_worker, to_worker,
};
use prost::Message;

/// The message types, in the order the first byte picks them.
pub const MESSAGES: [&str; 6] = [
    "Tensor",
    "ToWorker",
    "FromWorker",
    "SectionChunk",
    "HelloRequest",
    "OpenRequest",
];

pub fn run(data: &[u8]) {
    let Some((&which, msg)) = data.split_first() else {
        return;
    };
    match usize::from(which) % MESSAGES.len() {
        0 => {
            if let Ok(t) = Tensor::decode(msg) {
                tensor(&t);
            }
        }
        1 => {
            if let Ok(ToWorker {
                message: Some(to_worker::Message::Job(job)),
            }) = ToWorker::decode(msg)
                && let Some(t) = &job.input
            {
                tensor(t);
            }
        }
        2 => {
            if let Ok(FromWorker {
                message: Some(from_worker::Message::Result(r)),
            }) = FromWorker::decode(msg)
                && let Some(t) = &r.output
            {
                tensor(t);
            }
        }
        3 => {
            let _ = SectionChunk::decode(msg);
        }
        4 => {
            let _ = HelloRequest::decode(msg);
        }
        _ => {
            let _ = OpenRequest::decode(msg);
        }
    }
}

fn tensor(t: &Tensor) {
    let _ = decode_f32(t);
    let _ = decode_tile(t);
    let _ = decode_input(t);
}
