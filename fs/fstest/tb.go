package fstest

import "context"

// TB is the part of testing.TB the helpers here use; *testing.T and
// *testing.B satisfy it. fstest declares it instead of importing testing
// because the benchmark reached through `ocifs bench` builds its images with
// this package, and the product binary must link no test code (see
// cmd/ocifs's deps_test.go).
type TB interface {
	Helper()
	Context() context.Context
	TempDir() string
	Cleanup(func())
	Failed() bool
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skip(args ...any)
}
