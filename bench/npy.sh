# Sourced by the bench scripts: one input frame of a network as .npy.
#
#   npy_frame NET FILE   float32, the shape dsl-examples/NET.yaml declares, every value 0.186
npy_frame() {
  local shape dims values header d
  shape=$(grep -m1 -A1 '^  input:' "dsl-examples/$1.yaml" | sed -n 's/.*shape: *\[\(.*\)\].*/\1/p')
  IFS=', ' read -r -a dims <<<"$shape"
  values=1
  for d in "${dims[@]}"; do values=$((values * d)); done
  header="{'descr': '<f4', 'fortran_order': False, 'shape': ($(IFS=,; echo "${dims[*]}")), }"
  while (((${#header} + 11) % 64 != 0)); do header+=" "; done
  {
    printf '\x93NUMPY\x01\x00'
    printf "\\x$(printf %02x $(((${#header} + 1) % 256)))\\x$(printf %02x $(((${#header} + 1) / 256)))"
    printf '%s\n' "$header"
    head -c $((values * 4)) /dev/zero | tr '\0' '\076' # bytes 3e3e3e3e
  } >"$2"
}
