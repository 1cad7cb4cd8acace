package format

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"io"

	"rekey/schemas"
)

func init() {
	Register("rekey-v1", "rekey's own cell envelope: 0x01 ‖ nonce(12) ‖ AES-256-GCM ciphertext ‖ tag(16), AAD = label ‖ column ‖ record id ‖ dek_id; DEKs in a DEK table", func(opts map[string]string) (Format, error) {
		if err := newOptions("rekey-v1", opts).done(); err != nil {
			return nil, err
		}
		return RekeyV1{}, nil
	})
}

// RekeyV1 is rekey's own envelope (schemas/envelope.go), byte for byte.
type RekeyV1 struct{}

func (RekeyV1) Name() string           { return "rekey-v1" }
func (RekeyV1) Keys() KeyPlace         { return KeyTable }
func (RekeyV1) KeyColumn() string      { return "" }
func (RekeyV1) Needs() []string        { return nil }
func (RekeyV1) Text() bool             { return false }
func (RekeyV1) KeyText() bool          { return false }
func (RekeyV1) Overhead() int          { return schemas.CellOverhead }
func (RekeyV1) CellLen(n int) int      { return n + schemas.CellOverhead }
func (RekeyV1) Describe() string       { return "rekey-v1" }
func (RekeyV1) MaxPlaintext(n int) int { return max(n-schemas.CellOverhead, 0) }

// Cipher is AES-GCM with a 256-bit key.
func (RekeyV1) Cipher(secret []byte) (cipher.AEAD, error) {
	if len(secret) != schemas.DEKSize {
		return nil, fmt.Errorf("rekey-v1 cells use AES-256: the DEK is %d bytes, want %d", len(secret), schemas.DEKSize)
	}
	b, err := aes.NewCipher(secret)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func (RekeyV1) Open(dst []byte, aead cipher.AEAD, cell []byte, c *Cell) ([]byte, error) {
	var err error
	if c.AAD, err = schemas.CellAAD(c.AAD[:0], c.Column, c.RecordID, c.DEKID); err != nil {
		return dst, err
	}
	return schemas.OpenCell(dst, aead, cell, c.AAD)
}

func (RekeyV1) Seal(dst []byte, aead cipher.AEAD, rand io.Reader, pt []byte, c *Cell) ([]byte, error) {
	var err error
	if c.AAD, err = schemas.CellAAD(c.AAD[:0], c.Column, c.RecordID, c.DEKID); err != nil {
		return dst, err
	}
	out, err := schemas.SealCell(dst, aead, rand, pt, c.AAD)
	if err == nil {
		c.Tag = out[len(out)-schemas.TagSize:]
	}
	return out, err
}

func (RekeyV1) Binding(c *Cell) (Binding, error) { return Binding{DEKID: c.DEKID}, nil }
func (RekeyV1) DecodeKey(v []byte) ([]byte, error) {
	return nil, fmt.Errorf("rekey-v1 keeps DEKs in a DEK table, not in a column")
}
func (RekeyV1) EncodeKey(blob []byte) []byte { return blob }

// ReplaceKey implements Format: rekey-v1 keeps its keys in a DEK table.
func (RekeyV1) ReplaceKey(_, _ []byte) ([]byte, error) {
	return nil, fmt.Errorf("rekey-v1 keeps wrapped keys in a DEK table, not in its rows")
}
