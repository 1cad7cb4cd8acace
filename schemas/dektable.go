package schemas

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unicode/utf8"
)

// Wrap mechanisms, as written in the DEK table's wrap column.
const (
	WrapAESGCM        = "aes-gcm"
	WrapAESKWP        = "aes-kwp"
	WrapRSAOAEPSHA256 = "rsa-oaep-sha256"
	WrapRSAOAEPSHA1   = "rsa-oaep-sha1"
	// WrapRSAPKCS1 is RSA PKCS#1 v1.5 encryption, what OSS client-side
	// encryption wraps with (RSA/NONE/PKCS1Padding). It exists to read and
	// write that data: it is open to padding-oracle attacks, so rekey takes
	// it as a target only for oss-cse objects.
	WrapRSAPKCS1 = "rsa-pkcs1"
)

// WrapMechanisms lists the PKCS#11 mechanisms (the pkcs11 scheme's, in
// documentation order).
var WrapMechanisms = []string{WrapAESGCM, WrapAESKWP, WrapRSAOAEPSHA256, WrapRSAOAEPSHA1, WrapRSAPKCS1}

var (
	wrapMu    sync.RWMutex
	wrapNames = slices.Clone(WrapMechanisms)
)

// RegisterWrap adds the mechanisms of a custodian scheme to those a DEK
// table's wrap column may hold (keys.Register calls it).
func RegisterWrap(names ...string) {
	wrapMu.Lock()
	defer wrapMu.Unlock()
	for _, n := range names {
		if !slices.Contains(wrapNames, n) {
			wrapNames = append(wrapNames, n)
		}
	}
}

// KnownWrap reports whether m is a registered wrap mechanism.
func KnownWrap(m string) bool {
	wrapMu.RLock()
	defer wrapMu.RUnlock()
	return slices.Contains(wrapNames, m)
}

// KnownWraps lists the registered wrap mechanisms.
func KnownWraps() []string {
	wrapMu.RLock()
	defer wrapMu.RUnlock()
	return slices.Clone(wrapNames)
}

// MaxDEKIDBytes caps a dek_id.
const MaxDEKIDBytes = 256

// DEKRow is one row of a DEK table (format version 1). KCV is optional:
// tables written before it existed, or by other tools, have no kcv column
// (read as empty).
type DEKRow struct {
	DEKID   string    `parquet:"dek_id"`
	KEK     string    `parquet:"kek"`
	Wrap    string    `parquet:"wrap"`
	Wrapped []byte    `parquet:"wrapped"`
	Created time.Time `parquet:"created,timestamp(microsecond)"`
	KCV     []byte    `parquet:"kcv,optional"`
	// Invalid says why a row of an application's DEK table could not be
	// read as one (its wrapped key not in the configured encoding); not
	// stored.
	Invalid string `parquet:"-"`
}

// ErrBadDEKRow is returned by Validate for a malformed DEK table row.
var ErrBadDEKRow = errors.New("malformed DEK table row")

// Validate checks a row read from an untrusted DEK table.
func (r *DEKRow) Validate() error {
	switch {
	case r.Invalid != "":
		return fmt.Errorf("%w: dek_id %q: %s", ErrBadDEKRow, r.DEKID, r.Invalid)
	case r.DEKID == "":
		return fmt.Errorf("%w: empty dek_id", ErrBadDEKRow)
	case len(r.DEKID) > MaxDEKIDBytes:
		return fmt.Errorf("%w: dek_id longer than %d bytes", ErrBadDEKRow, MaxDEKIDBytes)
	case !utf8.ValidString(r.DEKID):
		return fmt.Errorf("%w: dek_id is not UTF-8", ErrBadDEKRow)
	case r.KEK == "":
		return fmt.Errorf("%w: dek_id %q has an empty kek", ErrBadDEKRow, r.DEKID)
	case !KnownWrap(r.Wrap):
		return fmt.Errorf("%w: dek_id %q has unknown wrap %q (known: %v)", ErrBadDEKRow, r.DEKID, r.Wrap, KnownWraps())
	case len(r.Wrapped) == 0:
		return fmt.Errorf("%w: dek_id %q has an empty wrapped key", ErrBadDEKRow, r.DEKID)
	case len(r.Wrapped) > MaxWrappedDEK:
		return fmt.Errorf("%w: dek_id %q wrapped key is %d bytes, limit %d", ErrBadDEKRow, r.DEKID, len(r.Wrapped), MaxWrappedDEK)
	case len(r.KCV) != 0 && len(r.KCV) != KCVSize:
		return fmt.Errorf("%w: dek_id %q has a %d-byte kcv, want %d (or none)", ErrBadDEKRow, r.DEKID, len(r.KCV), KCVSize)
	}
	return nil
}

// Key check values. A KCV lets a reader of the DEK table tell the right DEK
// from a wrong one without a record to try it on: a custodian that returns
// a wrong key without an error (a faulty HSM, a bit flipped on the way) is
// caught before the wrong key is wrapped anew and committed.
//
// KCV = first 8 bytes of HMAC-SHA256(key = DEK, message = "rekey.kcv.v1" ‖
// 0x00 ‖ dek_id). Why this construction:
//   - HMAC-SHA256 is a PRF: its output says nothing about the key beyond
//     letting a guess be tested, and guessing a random 256-bit key is out of
//     reach. The classic KCV (AES-ECB of a zero block) is avoided on purpose:
//     AES_DEK(0^128) is exactly GCM's authentication subkey H for that DEK, so
//     publishing it (even in part) would weaken the cells' authentication.
//   - The label separates this use of the DEK from every other; binding the
//     dek_id means two rows holding the same key do not show equal KCVs, and
//     a KCV copied to another row does not check.
//   - 8 bytes: a wrong key passes with probability 2^-64, and the table grows
//     by 8 bytes a row.
const (
	KCVSize  = 8
	kcvLabel = "rekey.kcv.v1"
)

// ErrKCVMismatch means an unwrapped DEK is not the key the DEK table row was
// written for. It is permanent for that unwrap result.
var ErrKCVMismatch = errors.New("key check value does not match: wrong key")

// KCV returns the key check value of dek under dekID.
func KCV(dek []byte, dekID string) []byte {
	m := hmac.New(sha256.New, dek)
	m.Write(KCVMessage(dekID))
	return m.Sum(nil)[:KCVSize]
}

// KCVMessage is what the KCV's HMAC-SHA256 authenticates: a custodian that
// holds the DEK inside (an HSM rewrapping it) computes the same KCV as the
// first KCVSize bytes of HMAC-SHA256(dek, KCVMessage(dekID)).
func KCVMessage(dekID string) []byte {
	return append(append([]byte(kcvLabel), 0), dekID...)
}

// CheckKCV reports whether dek is the key whose check value under dekID is
// kcv. An empty kcv is an error: callers decide what a missing KCV means.
func CheckKCV(dek []byte, dekID string, kcv []byte) error {
	if len(kcv) != KCVSize {
		return fmt.Errorf("%w: dek_id %q has a %d-byte kcv, want %d", ErrKCVMismatch, dekID, len(kcv), KCVSize)
	}
	if subtle.ConstantTimeCompare(KCV(dek, dekID), kcv) != 1 {
		return ErrKCVMismatch
	}
	return nil
}

// Proofs that an unwrapped source DEK is the right key, as recorded in the
// ledger's proof column before its new wrap is committed.
const (
	ProofKCV  = "kcv"  // checked against the DEK table's kcv
	ProofCell = "cell" // opened a cell of the dataset encrypted under it
	ProofNone = "none" // nothing to check against (no kcv, and no cell of it found or no dataset named)
	ProofBody = "body" // an object's whole body authenticated under it (GCM tag; CTR: the recorded MD5)
)
