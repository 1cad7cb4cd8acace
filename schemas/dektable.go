package schemas

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Wrap mechanisms, as written in the DEK table's wrap column.
const (
	WrapAESGCM        = "aes-gcm"
	WrapAESKWP        = "aes-kwp"
	WrapRSAOAEPSHA256 = "rsa-oaep-sha256"
	WrapRSAOAEPSHA1   = "rsa-oaep-sha1"
)

// WrapMechanisms lists every mechanism rekey knows, in documentation order.
var WrapMechanisms = []string{WrapAESGCM, WrapAESKWP, WrapRSAOAEPSHA256, WrapRSAOAEPSHA1}

// KnownWrap reports whether m is a wrap mechanism rekey supports.
func KnownWrap(m string) bool {
	for _, w := range WrapMechanisms {
		if w == m {
			return true
		}
	}
	return false
}

// MaxDEKIDBytes caps a dek_id.
const MaxDEKIDBytes = 256

// DEKRow is one row of a DEK table (format version 1).
type DEKRow struct {
	DEKID   string    `parquet:"dek_id"`
	KEK     string    `parquet:"kek"`
	Wrap    string    `parquet:"wrap"`
	Wrapped []byte    `parquet:"wrapped"`
	Created time.Time `parquet:"created,timestamp(microsecond)"`
}

// ErrBadDEKRow is returned by Validate for a malformed DEK table row.
var ErrBadDEKRow = errors.New("malformed DEK table row")

// Validate checks a row read from an untrusted DEK table.
func (r *DEKRow) Validate() error {
	switch {
	case r.DEKID == "":
		return fmt.Errorf("%w: empty dek_id", ErrBadDEKRow)
	case len(r.DEKID) > MaxDEKIDBytes:
		return fmt.Errorf("%w: dek_id longer than %d bytes", ErrBadDEKRow, MaxDEKIDBytes)
	case !utf8.ValidString(r.DEKID):
		return fmt.Errorf("%w: dek_id is not UTF-8", ErrBadDEKRow)
	case r.KEK == "":
		return fmt.Errorf("%w: dek_id %q has an empty kek", ErrBadDEKRow, r.DEKID)
	case !KnownWrap(r.Wrap):
		return fmt.Errorf("%w: dek_id %q has unknown wrap %q (known: %v)", ErrBadDEKRow, r.DEKID, r.Wrap, WrapMechanisms)
	case len(r.Wrapped) == 0:
		return fmt.Errorf("%w: dek_id %q has an empty wrapped key", ErrBadDEKRow, r.DEKID)
	case len(r.Wrapped) > MaxWrappedDEK:
		return fmt.Errorf("%w: dek_id %q wrapped key is %d bytes, limit %d", ErrBadDEKRow, r.DEKID, len(r.Wrapped), MaxWrappedDEK)
	}
	return nil
}
