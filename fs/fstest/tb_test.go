package fstest

import "testing"

// The helpers take a TB so that fstest need not import testing; every kind
// of test must still be able to pass itself.
var (
	_ TB = (*testing.T)(nil)
	_ TB = (*testing.B)(nil)
	_ TB = (*testing.F)(nil)
	_ TB = testing.TB(nil)
)
