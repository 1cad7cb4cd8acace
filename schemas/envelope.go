package schemas

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Envelope version 1: version byte, 96-bit nonce, AES-256-GCM ciphertext with
// its 128-bit tag appended.
const (
	EnvelopeV1       byte = 0x01
	NonceSize             = 12
	TagSize               = 16
	EnvelopeV1Min         = 1 + NonceSize + TagSize
	DEKSize               = 32 // AES-256
	MaxWrappedDEK         = 4096
	MaxCellBytes          = 64 << 20 // a cell larger than this is refused, not decrypted
	cellAADLabel          = "rekey.cell.v1"
	dekAADLabel           = "rekey.dek.v1"
	maxAADFieldBytes      = 1 << 16
)

// Sentinel errors of the envelope parser. They are permanent: retrying does
// not change the bytes.
var (
	ErrEnvelopeTooShort = errors.New("cell ciphertext too short for a rekey v1 envelope")
	ErrEnvelopeVersion  = errors.New("unknown cell envelope version")
	ErrCellTooLarge     = errors.New("cell exceeds the maximum cell size")
	ErrAuthFailed       = errors.New("cell failed authentication (corrupt, or moved to another row, column or DEK)")
	ErrAADField         = errors.New("AAD field too long")
)

// Envelope is a parsed cell. Nonce and Sealed alias the input slice.
type Envelope struct {
	Version byte
	Nonce   []byte
	Sealed  []byte // ciphertext || tag
}

// ParseEnvelope splits a cell into its parts without decrypting it.
func ParseEnvelope(b []byte) (Envelope, error) {
	if len(b) > MaxCellBytes+EnvelopeV1Min {
		return Envelope{}, fmt.Errorf("%w (%d bytes, limit %d)", ErrCellTooLarge, len(b), MaxCellBytes)
	}
	if len(b) < 1 {
		return Envelope{}, ErrEnvelopeTooShort
	}
	if b[0] != EnvelopeV1 {
		return Envelope{}, fmt.Errorf("%w 0x%02x (this rekey reads version 0x%02x)", ErrEnvelopeVersion, b[0], EnvelopeV1)
	}
	if len(b) < EnvelopeV1Min {
		return Envelope{}, fmt.Errorf("%w: %d bytes, need at least %d", ErrEnvelopeTooShort, len(b), EnvelopeV1Min)
	}
	return Envelope{Version: b[0], Nonce: b[1 : 1+NonceSize], Sealed: b[1+NonceSize:]}, nil
}

// CellAAD appends to dst the additional authenticated data of a cell: a label
// and the length-prefixed column name, record id and DEK id. Length prefixes
// make the encoding injective, so no two (column, record, dek) triples share
// an AAD.
func CellAAD(dst []byte, column, recordID, dekID string) ([]byte, error) {
	if len(column) > maxAADFieldBytes || len(recordID) > maxAADFieldBytes || len(dekID) > maxAADFieldBytes {
		return dst, ErrAADField
	}
	dst = append(dst, cellAADLabel...)
	dst = append(dst, 0)
	for _, f := range [...]string{column, recordID, dekID} {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(f)))
		dst = append(dst, f...)
	}
	return dst, nil
}

// DEKAAD is the AAD used when a DEK is wrapped with AES-GCM: it binds the
// wrapped key to its dek_id, so wrapped keys cannot be swapped between rows.
func DEKAAD(dekID string) []byte {
	b := make([]byte, 0, len(dekAADLabel)+1+len(dekID))
	b = append(b, dekAADLabel...)
	b = append(b, 0)
	return append(b, dekID...)
}

// SealCell appends a v1 envelope of plaintext to dst, with a fresh random
// nonce read from rand.
func SealCell(dst []byte, aead cipher.AEAD, rand io.Reader, plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) > MaxCellBytes {
		return dst, fmt.Errorf("%w (%d bytes, limit %d)", ErrCellTooLarge, len(plaintext), MaxCellBytes)
	}
	start := len(dst)
	dst = append(dst, EnvelopeV1)
	dst = append(dst, make([]byte, NonceSize)...)
	nonce := dst[start+1 : start+1+NonceSize]
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return dst[:start], fmt.Errorf("read nonce: %w", err)
	}
	return aead.Seal(dst, nonce, plaintext, aad), nil
}

// OpenCell authenticates and decrypts a v1 envelope, appending the plaintext
// to dst.
func OpenCell(dst []byte, aead cipher.AEAD, cell, aad []byte) ([]byte, error) {
	env, err := ParseEnvelope(cell)
	if err != nil {
		return dst, err
	}
	out, err := aead.Open(dst, env.Nonce, env.Sealed, aad)
	if err != nil {
		return dst, ErrAuthFailed
	}
	return out, nil
}

// CellOverhead is the number of bytes a v1 envelope adds to a plaintext.
const CellOverhead = 1 + NonceSize + TagSize

const bindAADLabel = "rekey.bind.v1"

// BindingAAD encodes a custodian binding that is more than a dek_id (a KMS
// encryption context, an AAD list) as AES-GCM additional data for keys
// wrapped by rekey itself: a label, then length-prefixed fields, context
// pairs sorted by name, so equal bindings give equal bytes and no two
// bindings share an encoding.
func BindingAAD(dekID string, context map[string]string, aad []string) []byte {
	b := append([]byte(bindAADLabel), 0)
	field := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	field(dekID)
	names := make([]string, 0, len(context))
	for k := range context {
		names = append(names, k)
	}
	sort.Strings(names)
	b = binary.BigEndian.AppendUint32(b, uint32(len(names)))
	for _, k := range names {
		field(k)
		field(context[k])
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(aad)))
	for _, a := range aad {
		field(a)
	}
	return b
}
