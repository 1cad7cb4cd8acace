package transforms

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// unitName turns a relative path into a flat, readable, collision-free part
// name: the path with separators replaced, plus a short hash of the exact
// path.
func unitName(rel string) string {
	h := sha256.Sum256([]byte(rel))
	flat := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		}
		return '_'
	}, strings.TrimSuffix(rel, ".parquet"))
	if len(flat) > 80 {
		flat = flat[len(flat)-80:]
	}
	return flat + "-" + hex.EncodeToString(h[:6])
}

// NewDEKID names the fresh DEK that replaces src in run runID. It is
// deterministic so a retried or resumed run mints the same names.
func NewDEKID(src, runID string) string {
	return src + "@" + runID
}

// SourceDEKIDOf inverts NewDEKID: the source dek_id a fresh DEK replaces and
// the run that minted it. ok is false for a dek_id not of that form. Run ids
// cannot contain '@', so the last one splits.
func SourceDEKIDOf(newID string) (src, runID string, ok bool) {
	i := strings.LastIndexByte(newID, '@')
	if i <= 0 || i == len(newID)-1 {
		return "", "", false
	}
	return newID[:i], newID[i+1:], true
}
