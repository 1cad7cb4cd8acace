package format

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"rekey/schemas"
)

func init() {
	Register("tink-envelope", "Tink KMS envelope AEAD cells (tink-go aead.NewKMSEnvelopeAEAD2, or a KmsEnvelopeAeadKey keyset): uint32 length, the remote AEAD's encryption of a serialized Tink AES-GCM key, then the AES-GCM ciphertext; each cell carries its own wrapped DEK; see docs/FORMAT.md", newTink)
}

// Tink's envelope: [output prefix] uint32_be(len(encDEK)) || encDEK ||
// payload, payload = iv(12) || ciphertext || tag(16) under the DEK, which
// is a serialized google.crypto.tink.AesGcmKey (version = 1, key_value =
// 3) encrypted by the remote AEAD with empty associated data.
const (
	tinkLenSize     = 4
	tinkMaxEncDEK   = 4096 // tink-go's maxLengthEncryptedDEK
	tinkPrefixSize  = 5
	tinkPrefixTink  = 0x01
	tinkPrefixOld   = 0x00 // LEGACY and CRUNCHY
	tinkIVSize      = 12
	tinkTagSize     = 16
	tinkKeyValueTag = 3<<3 | 2 // field 3, length-delimited
)

// Errors of the tink-envelope parser; permanent (the bytes do not change).
var (
	ErrTinkEnvelope = errors.New("not a Tink KMS envelope cell")
	ErrTinkKeyType  = errors.New("the DEK is not a Tink AES-GCM key")
)

// Tink is the configured "tink-envelope" format.
type Tink struct {
	prefix  string // raw, tink, legacy
	keyID   uint32
	anyID   bool
	keySize int // of new DEKs (dek_template)
	enc     encoding
	aad     template
	needs   []string
	desc    string
}

// tinkTemplates are Tink's AEAD DEK templates by name: the two rekey
// takes, and the others, refused by name.
var tinkTemplates = map[string]int{"AES128_GCM": 16, "AES256_GCM": 32,
	"AES128_CTR_HMAC_SHA256": 0, "AES256_CTR_HMAC_SHA256": 0, "CHACHA20_POLY1305": 0, "XCHACHA20_POLY1305": 0,
	"AES128_GCM_SIV": 0, "AES256_GCM_SIV": 0, "AES128_EAX": 0, "AES256_EAX": 0}

func newTink(m map[string]string) (Format, error) {
	o := newOptions("tink-envelope", m)
	f := &Tink{}
	bad := func(opt, format string, a ...any) error {
		return fmt.Errorf("format tink-envelope: option %s: %s", opt, fmt.Sprintf(format, a...))
	}
	switch v := o.get("prefix", "raw"); v {
	case "raw", "tink", "legacy":
		f.prefix = v
	default:
		return nil, bad("prefix", "%q: use raw (aead.NewKMSEnvelopeAEAD2, no prefix), tink (a keyset key with output prefix TINK: 0x01 and the 4-byte key id) or legacy (LEGACY or CRUNCHY: 0x00 and the key id)", v)
	}
	id := o.get("key_id", "")
	switch {
	case id == "":
		f.anyID = true
	case f.prefix == "raw":
		return nil, bad("key_id", "set, but prefix is raw (cells carry no key id)")
	default:
		n, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return nil, bad("key_id", "%q is not the keyset's key id (a decimal uint32)", id)
		}
		f.keyID = uint32(n)
	}
	t := o.get("dek_template", "AES256_GCM")
	size, known := tinkTemplates[t]
	switch {
	case !known:
		return nil, bad("dek_template", "%q: use AES256_GCM or AES128_GCM", t)
	case size == 0:
		return nil, bad("dek_template", "%s is not supported: rekey opens and writes Tink envelopes whose DEKs are AES-GCM keys (AES128_GCM, AES256_GCM)", t)
	}
	f.keySize = size
	var err error
	if f.enc, err = parseEncoding(o.get("encoding", "raw")); err != nil {
		return nil, bad("encoding", "%v", err)
	}
	if f.aad, err = parseTemplate("aad", o.get("aad", ""), &f.needs); err != nil {
		return nil, fmt.Errorf("format tink-envelope: option %w", err)
	}
	if err := o.done(); err != nil {
		return nil, err
	}
	f.desc = fmt.Sprintf("tink-envelope prefix=%s dek_template=%s encoding=%s aad=%q keys=cell", f.prefix, t, f.enc.name, f.aad.src)
	if !f.anyID {
		f.desc += fmt.Sprintf(" key_id=%d", f.keyID)
	}
	return f, nil
}

func (f *Tink) Name() string      { return "tink-envelope" }
func (f *Tink) Keys() KeyPlace    { return KeyCell }
func (f *Tink) KeyColumn() string { return "" }
func (f *Tink) Needs() []string   { return f.needs }
func (f *Tink) Text() bool        { return f.enc.text }
func (f *Tink) KeyText() bool     { return f.enc.text }
func (f *Tink) Describe() string  { return f.desc }

func (f *Tink) prefixLen() int {
	if f.prefix == "raw" {
		return 0
	}
	return tinkPrefixSize
}

// Overhead counts a wrapped DEK of up to 512 bytes (an RSA-4096 wrap; KMS
// ciphertexts are 150-250 bytes); the real size is the custodian's.
func (f *Tink) Overhead() int {
	return f.enc.encodedLen(f.prefixLen() + tinkLenSize + 512 + tinkIVSize + tinkTagSize)
}
func (f *Tink) CellLen(n int) int { return f.enc.encodedLen(n) + f.Overhead() }
func (f *Tink) MaxPlaintext(n int) int {
	return max(f.enc.decodedLen(n)-f.prefixLen()-tinkLenSize-1-tinkIVSize-tinkTagSize, 0)
}

// split parses a cell: its output prefix, wrapped DEK and payload.
func (f *Tink) split(cell []byte) (prefix, encDEK, payload []byte, err error) {
	if len(cell) > f.enc.encodedLen(schemas.MaxCellBytes+tinkPrefixSize+tinkLenSize+tinkMaxEncDEK+tinkIVSize+tinkTagSize) {
		return nil, nil, nil, fmt.Errorf("%w (%d bytes)", schemas.ErrCellTooLarge, len(cell))
	}
	raw, err := f.enc.decode(cell)
	if err != nil {
		return nil, nil, nil, err
	}
	if n := f.prefixLen(); n > 0 {
		if len(raw) < n {
			return nil, nil, nil, fmt.Errorf("%w: %d bytes, shorter than the %s output prefix", ErrTinkEnvelope, len(raw), f.prefix)
		}
		want := byte(tinkPrefixTink)
		if f.prefix == "legacy" {
			want = tinkPrefixOld
		}
		if raw[0] != want {
			return nil, nil, nil, fmt.Errorf("%w: output prefix byte 0x%02x, want 0x%02x (%s); is format_options.prefix right?", ErrTinkEnvelope, raw[0], want, f.prefix)
		}
		if id := binary.BigEndian.Uint32(raw[1:5]); !f.anyID && id != f.keyID {
			return nil, nil, nil, fmt.Errorf("%w: written by keyset key %d, the job names key_id %d", ErrTinkEnvelope, id, f.keyID)
		}
		prefix, raw = raw[:n], raw[n:]
	}
	if len(raw) <= tinkLenSize {
		return nil, nil, nil, fmt.Errorf("%w: %d bytes, too short for the encrypted DEK's length", ErrTinkEnvelope, len(raw))
	}
	n := int(binary.BigEndian.Uint32(raw))
	if n <= 0 || n > tinkMaxEncDEK || n > len(raw)-tinkLenSize {
		return nil, nil, nil, fmt.Errorf("%w: encrypted DEK length %d in a %d-byte cell (limit %d; with a keyset's 5-byte prefix set format_options.prefix)", ErrTinkEnvelope, n, len(raw), tinkMaxEncDEK)
	}
	encDEK, payload = raw[tinkLenSize:tinkLenSize+n], raw[tinkLenSize+n:]
	if len(payload) < tinkIVSize+tinkTagSize {
		return nil, nil, nil, fmt.Errorf("%w: the payload after the encrypted DEK is %d bytes, shorter than an AES-GCM IV and tag", ErrTinkEnvelope, len(payload))
	}
	return prefix, encDEK, payload, nil
}

// DecodeKey implements Format: the wrapped DEK inside a cell.
func (f *Tink) DecodeKey(cell []byte) ([]byte, error) {
	_, encDEK, _, err := f.split(cell)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(encDEK), nil
}

// EncodeKey implements Format; a tink cell has no key column.
func (f *Tink) EncodeKey(blob []byte) []byte { return nil }

// ReplaceKey implements Format: the cell with its wrapped DEK replaced by
// blob, output prefix and payload byte for byte as they were.
func (f *Tink) ReplaceKey(cell, blob []byte) ([]byte, error) {
	prefix, _, payload, err := f.split(cell)
	if err != nil {
		return nil, err
	}
	if len(blob) == 0 || len(blob) > tinkMaxEncDEK {
		return nil, fmt.Errorf("the new wrapped DEK is %d bytes; Tink reads 1 to %d", len(blob), tinkMaxEncDEK)
	}
	raw := make([]byte, 0, len(prefix)+tinkLenSize+len(blob)+len(payload))
	raw = append(raw, prefix...)
	raw = binary.BigEndian.AppendUint32(raw, uint32(len(blob)))
	raw = append(raw, blob...)
	raw = append(raw, payload...)
	return f.enc.encode(nil, raw), nil
}

// Binding implements Format: Tink encrypts DEKs with empty associated data.
func (f *Tink) Binding(*Cell) (Binding, error) { return Binding{}, nil }

// Cipher implements Format: secret is a serialized AesGcmKey.
func (f *Tink) Cipher(secret []byte) (cipher.AEAD, error) {
	key, err := tinkAESGCMKey(secret)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// tinkAESGCMKey reads key_value out of a serialized AesGcmKey, refusing
// other key types by what their fields show.
func tinkAESGCMKey(p []byte) ([]byte, error) {
	var key []byte
	for len(p) > 0 {
		tag, n := binary.Uvarint(p)
		if n <= 0 {
			return nil, fmt.Errorf("%w: not a serialized Tink key (bad field tag)", ErrTinkKeyType)
		}
		p = p[n:]
		switch field, wire := tag>>3, tag&7; {
		case field == 1 && wire == 0: // version
			v, n := binary.Uvarint(p)
			if n <= 0 {
				return nil, fmt.Errorf("%w: bad version field", ErrTinkKeyType)
			}
			if v != 0 {
				return nil, fmt.Errorf("%w: key version %d (Tink writes 0)", ErrTinkKeyType, v)
			}
			p = p[n:]
		case field == 3 && wire == 2: // key_value
			l, n := binary.Uvarint(p)
			if n <= 0 || l > uint64(len(p)-n) {
				return nil, fmt.Errorf("%w: bad key_value field", ErrTinkKeyType)
			}
			key, p = p[n:n+int(l)], p[n+int(l):]
		case field == 2 && wire == 2:
			return nil, fmt.Errorf("%w: it has bytes in field 2, as AES-CTR-HMAC (a nested AES-CTR key) and ChaCha20-Poly1305 (its key) DEKs do; rekey supports AES128_GCM and AES256_GCM DEK templates", ErrTinkKeyType)
		default:
			return nil, fmt.Errorf("%w: unexpected field %d (wire type %d); rekey supports AES128_GCM and AES256_GCM DEK templates", ErrTinkKeyType, field, wire)
		}
	}
	if len(key) != 16 && len(key) != 32 {
		return nil, fmt.Errorf("%w: key_value is %d bytes, want 16 or 32 (AES128_GCM, AES256_GCM)", ErrTinkKeyType, len(key))
	}
	return key, nil
}

// EncodeSecret implements SecretEncoder: the serialized AesGcmKey Tink
// writes for an AES key (version 0 is omitted, as proto3 does).
func (f *Tink) EncodeSecret(aesKey []byte) ([]byte, error) {
	if len(aesKey) < f.keySize {
		return nil, fmt.Errorf("a new Tink DEK needs %d key bytes, got %d", f.keySize, len(aesKey))
	}
	out := make([]byte, 0, 2+f.keySize)
	out = append(out, tinkKeyValueTag, byte(f.keySize))
	return append(out, aesKey[:f.keySize]...), nil
}

func (f *Tink) aadOf(c *Cell) ([]byte, error) {
	if f.aad.empty() {
		return nil, nil
	}
	var err error
	c.AAD, err = f.aad.appendTo(c.AAD[:0], c)
	return c.AAD, err
}

// Open implements Format: the payload of cell, under the DEK whose cipher
// is aead (the wrapped DEK in the cell is not read here).
func (f *Tink) Open(dst []byte, aead cipher.AEAD, cell []byte, c *Cell) ([]byte, error) {
	_, _, payload, err := f.split(cell)
	if err != nil {
		return dst, err
	}
	aad, err := f.aadOf(c)
	if err != nil {
		return dst, err
	}
	out, err := aead.Open(dst, payload[:tinkIVSize], payload[tinkIVSize:], aad)
	if err != nil {
		return dst, fmt.Errorf("%w; a Tink DEK template other than AES-GCM (ChaCha20, XChaCha20, AES-GCM-SIV keys look alike serialized) is not supported", ErrCellAuth)
	}
	return out, nil
}

// CanSeal says whether cells can be written with these options: a keyset
// prefix needs the id of the keyset key the application reads them with.
func (f *Tink) CanSeal() error {
	if f.prefix != "raw" && f.anyID {
		return fmt.Errorf("format tink-envelope: option key_id: missing: writing cells with prefix %s needs the id of the keyset key the application decrypts them with", f.prefix)
	}
	return nil
}

// Seal implements Format: a cell carrying the wrapped DEK c.Key.
func (f *Tink) Seal(dst []byte, aead cipher.AEAD, rand io.Reader, pt []byte, c *Cell) ([]byte, error) {
	if len(pt) > schemas.MaxCellBytes {
		return dst, fmt.Errorf("%w (%d bytes)", schemas.ErrCellTooLarge, len(pt))
	}
	if err := f.CanSeal(); err != nil {
		return dst, err
	}
	if len(c.Key) == 0 || len(c.Key) > tinkMaxEncDEK {
		return dst, fmt.Errorf("tink-envelope: the wrapped DEK to write is %d bytes; Tink reads 1 to %d", len(c.Key), tinkMaxEncDEK)
	}
	aad, err := f.aadOf(c)
	if err != nil {
		return dst, err
	}
	raw := make([]byte, 0, f.prefixLen()+tinkLenSize+len(c.Key)+tinkIVSize+len(pt)+tinkTagSize)
	switch f.prefix {
	case "tink":
		raw = binary.BigEndian.AppendUint32(append(raw, tinkPrefixTink), f.keyID)
	case "legacy":
		raw = binary.BigEndian.AppendUint32(append(raw, tinkPrefixOld), f.keyID)
	}
	raw = binary.BigEndian.AppendUint32(raw, uint32(len(c.Key)))
	raw = append(raw, c.Key...)
	iv := raw[len(raw) : len(raw)+tinkIVSize]
	if _, err := io.ReadFull(rand, iv); err != nil {
		return dst, fmt.Errorf("read IV: %w", err)
	}
	raw = aead.Seal(raw[:len(raw)+tinkIVSize], iv, pt, aad)
	c.Tag = raw[len(raw)-tinkTagSize:]
	return f.enc.encode(dst, raw), nil
}
