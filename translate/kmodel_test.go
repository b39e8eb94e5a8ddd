package translate

import (
	"bytes"
	"math/big"
	"strings"

	"golang.org/x/sys/unix"
)

// A model of the kernel's number parsing, written from lib/kstrtox.c,
// lib/string.c (strstrip) and lib/ctype.c as Linux 6.18 has them, and
// kept apart from the code under test: the fuzz targets hold cgfs's
// parsers to it.

// kIsSpace is the kernel's isspace on one byte: ASCII's white space
// and 0xa0 (lib/ctype.c marks it _S|_SP). UTF-8 means nothing there.
func kIsSpace(c byte) bool { return c == ' ' || c >= '\t' && c <= '\r' || c == 0xa0 }

// kStrstrip is strstrip(buf) of what a write(2) handed kernfs: the buffer
// is a C string (it ends at the first NUL), its trailing white space is
// cut, then its leading white space skipped.
func kStrstrip(buf []byte) []byte {
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	end := len(buf)
	for end > 0 && kIsSpace(buf[end-1]) {
		end--
	}
	start := 0
	for start < end && kIsSpace(buf[start]) {
		start++
	}
	return buf[start:end]
}

// at is s[i] as C reads a NUL-terminated string.
func at(s []byte, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

func kIsXdigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// kKstrtoull0 is _kstrtoull(s, 0, &res): the radix from the prefix
// (_parse_integer_fixup_radix), the longest run of digits of that radix
// (_parse_integer, which notes an overflow of 64 bits and parses on),
// then one '\n' allowed after them and nothing else. The run's value
// is taken with math/big, not with the overflow arithmetic under test.
func kKstrtoull0(s []byte) (uint64, unix.Errno) {
	base, digits := 10, "0123456789"
	if at(s, 0) == '0' {
		if at(s, 1)|0x20 == 'x' && kIsXdigit(at(s, 2)) {
			base, digits, s = 16, "0123456789abcdefABCDEF", s[2:]
		} else {
			base, digits = 8, "01234567"
		}
	}
	n := 0
	for n < len(s) && strings.IndexByte(digits, s[n]) >= 0 {
		n++
	}
	if n > 0 {
		v, ok := new(big.Int).SetString(string(s[:n]), base)
		if !ok || !v.IsUint64() {
			return 0, unix.ERANGE
		}
	}
	if n == 0 {
		return 0, unix.EINVAL
	}
	rest := s[n:]
	if at(rest, 0) == '\n' {
		rest = rest[1:]
	}
	if len(rest) > 0 {
		return 0, unix.EINVAL
	}
	v, _ := new(big.Int).SetString(string(s[:n]), base)
	return v.Uint64(), 0
}

// kKstrtoint is kstrtoint(strstrip(buf), 0, &n): a sign (kstrtoll takes
// '-', kstrtoull one '+'), then the unsigned parse, then the range of a
// long long and of an int.
func kKstrtoint(buf []byte) (int64, unix.Errno) {
	s := kStrstrip(buf)
	var n int64
	if at(s, 0) == '-' {
		u, errno := kKstrtoull0(s[1:])
		if errno != 0 {
			return 0, errno
		}
		if int64(-u) > 0 {
			return 0, unix.ERANGE
		}
		n = int64(-u)
	} else {
		if at(s, 0) == '+' {
			s = s[1:]
		}
		u, errno := kKstrtoull0(s)
		if errno != 0 {
			return 0, errno
		}
		if int64(u) < 0 {
			return 0, unix.ERANGE
		}
		n = int64(u)
	}
	if n != int64(int32(n)) {
		return 0, unix.ERANGE
	}
	return n, 0
}
