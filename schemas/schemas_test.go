package schemas_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"testing"

	"rekey/schemas"
)

func aead(t testing.TB) cipher.AEAD {
	b, _ := aes.NewCipher(bytes.Repeat([]byte{1}, 32))
	g, _ := cipher.NewGCM(b)
	return g
}

func TestCellRoundTripAndBinding(t *testing.T) {
	g := aead(t)
	aad, _ := schemas.CellAAD(nil, "payload", "42", "dek-1")
	cell, err := schemas.SealCell(nil, g, rand.Reader, []byte("hello"), aad)
	if err != nil {
		t.Fatal(err)
	}
	if len(cell) != 5+schemas.CellOverhead || cell[0] != schemas.EnvelopeV1 {
		t.Fatalf("cell layout: %x", cell)
	}
	pt, err := schemas.OpenCell(nil, g, cell, aad)
	if err != nil || string(pt) != "hello" {
		t.Fatalf("open: %q %v", pt, err)
	}
	// Moved to another row, column or DEK: authentication fails.
	for _, other := range [][3]string{{"note", "42", "dek-1"}, {"payload", "43", "dek-1"}, {"payload", "42", "dek-2"}} {
		aad2, _ := schemas.CellAAD(nil, other[0], other[1], other[2])
		if _, err := schemas.OpenCell(nil, g, cell, aad2); !errors.Is(err, schemas.ErrAuthFailed) {
			t.Fatalf("cell opened under %v: %v", other, err)
		}
	}
	// A flipped bit anywhere fails.
	for i := range cell {
		c := bytes.Clone(cell)
		c[i] ^= 0x10
		if _, err := schemas.OpenCell(nil, g, c, aad); err == nil {
			t.Fatalf("flipped bit at byte %d went unnoticed", i)
		}
	}
	// Two seals of the same plaintext differ (random nonce).
	again, _ := schemas.SealCell(nil, g, rand.Reader, []byte("hello"), aad)
	if bytes.Equal(again, cell) {
		t.Fatal("two seals gave the same ciphertext")
	}
}

func TestAADIsInjective(t *testing.T) {
	// Without length prefixes these would collide.
	a, _ := schemas.CellAAD(nil, "ab", "c", "d")
	b, _ := schemas.CellAAD(nil, "a", "bc", "d")
	if bytes.Equal(a, b) {
		t.Fatal("AAD encoding is ambiguous")
	}
}

func TestParseEnvelopeErrors(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want error
	}{
		{nil, schemas.ErrEnvelopeTooShort},
		{[]byte{1, 2, 3}, schemas.ErrEnvelopeTooShort},
		{append([]byte{2}, make([]byte, 40)...), schemas.ErrEnvelopeVersion},
		{make([]byte, schemas.MaxCellBytes+schemas.EnvelopeV1Min+1), schemas.ErrCellTooLarge},
	} {
		if _, err := schemas.ParseEnvelope(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("len %d: got %v, want %v", len(tc.in), err, tc.want)
		}
	}
}

func TestDEKRowValidate(t *testing.T) {
	ok := schemas.DEKRow{DEKID: "d", KEK: "pkcs11:token=t;object=k", Wrap: "aes-gcm", Wrapped: []byte{1}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*schemas.DEKRow){
		"empty id":     func(r *schemas.DEKRow) { r.DEKID = "" },
		"long id":      func(r *schemas.DEKRow) { r.DEKID = string(make([]byte, 300)) },
		"no kek":       func(r *schemas.DEKRow) { r.KEK = "" },
		"unknown wrap": func(r *schemas.DEKRow) { r.Wrap = "des" },
		"no key":       func(r *schemas.DEKRow) { r.Wrapped = nil },
		"huge key":     func(r *schemas.DEKRow) { r.Wrapped = make([]byte, 5000) },
		"not utf8":     func(r *schemas.DEKRow) { r.DEKID = "\xff" },
	} {
		r := ok
		mut(&r)
		if err := r.Validate(); !errors.Is(err, schemas.ErrBadDEKRow) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

func FuzzParseEnvelope(f *testing.F) {
	g := aead(f)
	aad, _ := schemas.CellAAD(nil, "payload", "1", "d")
	// A fixed nonce: fuzz workers are separate processes and must build
	// the same seed cell.
	cell, _ := schemas.SealCell(nil, g, bytes.NewReader(make([]byte, schemas.NonceSize)), []byte("seed plaintext"), aad)
	f.Add(cell)
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add(make([]byte, schemas.EnvelopeV1Min))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := schemas.ParseEnvelope(b)
		if err == nil && (len(env.Nonce) != schemas.NonceSize || len(env.Sealed) < schemas.TagSize) {
			t.Fatalf("accepted malformed envelope %x", b)
		}
		// Opening arbitrary bytes must never panic, and never succeed
		// unless the bytes are the seeded cell.
		if pt, err := schemas.OpenCell(nil, g, b, aad); err == nil && !bytes.Equal(b, cell) {
			t.Fatalf("forged cell opened: %x -> %x", b, pt)
		}
	})
}

func FuzzDEKRow(f *testing.F) {
	f.Add("dek-1", "pkcs11:token=a;object=b", "aes-gcm", []byte{1, 2, 3}, []byte{})
	f.Add("dek-1", "pkcs11:token=a;object=b", "aes-kwp", []byte{1, 2, 3}, schemas.KCV(make([]byte, 32), "dek-1"))
	f.Add("", "", "", []byte{}, []byte{1})
	f.Fuzz(func(t *testing.T, id, kek, wrap string, wrapped, kcv []byte) {
		r := schemas.DEKRow{DEKID: id, KEK: kek, Wrap: wrap, Wrapped: wrapped, KCV: kcv}
		if err := r.Validate(); err == nil {
			if id == "" || kek == "" || !schemas.KnownWrap(wrap) || len(wrapped) == 0 || len(wrapped) > schemas.MaxWrappedDEK || len(id) > schemas.MaxDEKIDBytes ||
				(len(kcv) != 0 && len(kcv) != schemas.KCVSize) {
				t.Fatalf("accepted invalid row %+v", r)
			}
		}
	})
}

func TestDEKIndex(t *testing.T) {
	x := schemas.NewDEKIndex()
	a := &schemas.DEKRow{DEKID: "a", Wrapped: []byte("wrapped-1")}
	b := &schemas.DEKRow{DEKID: "a", Wrapped: []byte("wrapped-2")}
	for _, c := range []struct {
		file int
		r    *schemas.DEKRow
		want schemas.DEKIDStatus
	}{
		{0, a, schemas.DEKIDNew},
		{0, a, schemas.DEKIDRepeat},   // same file, same key: harmless
		{0, b, schemas.DEKIDConflict}, // another wrapped key
		{1, a, schemas.DEKIDConflict}, // another file
		{0, a, schemas.DEKIDRepeat},   // the first row stays the reference
		{0, &schemas.DEKRow{DEKID: "b", Wrapped: a.Wrapped}, schemas.DEKIDNew},
	} {
		if got := x.Add(c.file, c.r); got != c.want {
			t.Errorf("Add(file %d, %q %q) = %v, want %v", c.file, c.r.DEKID, c.r.Wrapped, got, c.want)
		}
	}
	if x.Len() != 2 || schemas.DEKIDNew.Err("a") != nil || schemas.DEKIDRepeat.Err("a") == nil || schemas.DEKIDConflict.Err("a") == nil {
		t.Errorf("Len %d, errors %v %v %v", x.Len(), schemas.DEKIDNew.Err("a"), schemas.DEKIDRepeat.Err("a"), schemas.DEKIDConflict.Err("a"))
	}
}
