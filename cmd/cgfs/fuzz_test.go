package main

import (
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var decimal = regexp.MustCompile(`^[+-]?[0-9]+$`)

// FuzzParseBytes: cgfs run --memory. A positive decimal, with at most
// one K, M or G, is that many bytes exactly (never wrapped round past
// 64 bits) and reads back the same written out in full; anything else
// is refused.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"67108864", "64M", "1G", "512K", "0", "-5", "garbage", "99999999999G", "8589934591G",
		"8589934592G", "9223372036854775807", "9223372036854775808", "+1K", "1KK", "K", "", "1g", "1 G", "01M", "1T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseBytes(s)
		digits, mult := s, int64(1)
		for suffix, m := range map[string]int64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30} {
			if rest, ok := strings.CutSuffix(s, suffix); ok {
				digits, mult = rest, m
			}
		}
		want, ok := new(big.Int), decimal.MatchString(digits)
		if ok {
			want.SetString(strings.TrimPrefix(digits, "+"), 10)
			want.Mul(want, big.NewInt(mult))
			ok = want.Sign() > 0 && want.IsInt64()
		}
		switch {
		case !ok && err == nil:
			t.Fatalf("parseBytes(%q) = %d, want a refusal", s, n)
		case !ok:
			return
		case err != nil || n != want.Int64():
			t.Fatalf("parseBytes(%q) = %d, %v; want %s", s, n, err, want)
		}
		if again, err := parseBytes(strconv.FormatInt(n, 10)); err != nil || again != n {
			t.Fatalf("parseBytes(%q) = %d, which written out reads %d, %v", s, n, again, err)
		}
	})
}
