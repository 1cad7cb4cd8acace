package transforms

import (
	"strings"

	"rekey/transforms/ledger"
)

// unitName is ledger.UnitName: the flat name of a unit, shared by its
// ledger part and the DEK table file a key-column rewrap makes for it.
func unitName(rel string) string { return ledger.UnitName(rel) }

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
