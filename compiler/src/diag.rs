//! Diagnostics: errors as data, with a span into a source file, rendered with a code frame.
//!
//! Every stage that reads user input (YAML, layer expressions, weights, cluster files)
//! collects all the problems it finds as [`Diagnostic`]s instead of stopping at the first,
//! and [`Diagnostics::render`] prints them the way `adcnnc check` shows them:
//! `file:line:col`, the offending line with a caret underneath, and a help line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId(u32);

/// A byte range in one source file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: FileId,
    pub range: Range<usize>,
}

impl Span {
    pub fn new(file: FileId, range: Range<usize>) -> Self {
        Span { file, range }
    }
}

/// The text of every file read so far, so that diagnostics can quote them.
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

#[derive(Debug)]
struct SourceFile {
    /// The name shown in diagnostics (the path as the user gave it).
    name: String,
    path: PathBuf,
    text: String,
}

impl SourceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: &Path, text: String) -> FileId {
        let id = FileId(self.files.len() as u32);
        self.files.push(SourceFile {
            name: path.display().to_string(),
            path: path.to_path_buf(),
            text,
        });
        id
    }

    pub fn text(&self, id: FileId) -> &str {
        &self.files[id.0 as usize].text
    }

    pub fn path(&self, id: FileId) -> &Path {
        &self.files[id.0 as usize].path
    }

    pub fn name(&self, id: FileId) -> &str {
        &self.files[id.0 as usize].name
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(id);
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One problem found in the user's input.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Where the problem is, with a short label shown under the caret.
    pub span: Option<Span>,
    pub label: String,
    pub help: Option<String>,
    /// Secondary places worth showing (e.g. the first definition of a duplicate name).
    pub notes: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            span: None,
            label: String::new(),
            help: None,
            notes: Vec::new(),
        }
    }

    pub fn at(mut self, span: &Span, label: impl Into<String>) -> Self {
        self.span = Some(span.clone());
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn note(mut self, span: &Span, label: impl Into<String>) -> Self {
        self.notes.push((span.clone(), label.into()));
        self
    }
}

/// The problems found in one run, in the order found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Renders every diagnostic as plain text (no colours), each with a code frame.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&render_one(d, sources));
        }
        let n = self.0.len();
        out.push_str(&format!(
            "\n{n} error{} found\n",
            if n == 1 { "" } else { "s" }
        ));
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The adapter between our diagnostics and miette's renderer.
#[derive(Debug)]
struct Rendered<'a> {
    diag: &'a Diagnostic,
    source: Option<NamedSource<String>>,
    labels: Vec<LabeledSpan>,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
}

fn render_one(d: &Diagnostic, sources: &SourceMap) -> String {
    let mut rendered = Rendered {
        diag: d,
        source: None,
        labels: Vec::new(),
    };
    let mut extra_files = Vec::new();
    if let Some(span) = &d.span {
        let text = sources.text(span.file);
        rendered.source = Some(NamedSource::new(sources.name(span.file), text.to_string()));
        let range = clamp(span.range.clone(), text.len());
        rendered.labels.push(LabeledSpan::new_primary_with_span(
            Some(d.label.clone()),
            range,
        ));
        for (note, label) in &d.notes {
            if note.file == span.file {
                let range = clamp(note.range.clone(), text.len());
                rendered
                    .labels
                    .push(LabeledSpan::new_with_span(Some(label.clone()), range));
            } else {
                extra_files.push((note, label));
            }
        }
    }
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false)
        .with_context_lines(1);
    let mut out = String::new();
    if handler.render_report(&mut out, &rendered).is_err() {
        out = format!("error: {}\n", d.message);
    }
    for (note, label) in extra_files {
        let (line, col) = sources.line_col(note.file, note.range.start);
        out.push_str(&format!(
            "  note: {label} ({}:{line}:{col})\n",
            sources.name(note.file)
        ));
    }
    out
}

fn clamp(r: Range<usize>, len: usize) -> (usize, usize) {
    let start = r.start.min(len);
    let end = r.end.clamp(start, len);
    (start, end - start)
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = word.chars().count().div_ceil(3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let mut sm = SourceMap::new();
        let f = sm.add(Path::new("a.yaml"), "ab\ncd\n".into());
        assert_eq!(sm.line_col(f, 0), (1, 1));
        assert_eq!(sm.line_col(f, 4), (2, 2));
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(did_you_mean("cnov", ["conv", "relu"]), Some("conv"));
        assert_eq!(did_you_mean("transformer", ["conv", "relu"]), None);
    }
}
