// Package mountinfo reads the kernel's mount table, /proc/PID/mountinfo in
// the format of proc(5), for cmd/ocifs, fs and bench: one parser, fuzzed,
// instead of one per caller.
//
// # Invariants
//
//   - [Parse] never panics and never fails: a line it cannot read (too few
//     fields, no "-" separator) is skipped, as the kernel never writes one.
//   - Fields are split on single spaces and lines on '\n' only. The kernel
//     escapes space, tab, newline and backslash in paths as octal (\040), so
//     any other white space ('\r', '\f', '\v', U+0085) belongs to the path,
//     and paths come back byte for byte as the mount was made.
//
// # What it must not do
//
// It imports no other ocifs package and changes nothing: it only reads.
package mountinfo
