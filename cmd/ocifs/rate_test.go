package main

import "testing"

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true},
		{"1000", 1000, true},
		{"800K", 800 << 10, true},
		{"20m", 20 << 20, true},
		{"1G", 1 << 30, true},
		{"0", 0, false},
		{"-5M", 0, false},
		{"M", 0, false},
		{"12x", 0, false},
		{"99999999999G", 0, false},
	}
	for _, tt := range tests {
		got, err := parseRate(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseRate(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
