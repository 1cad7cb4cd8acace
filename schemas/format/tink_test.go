package format_test

// Tests of the "tink-envelope" format against tink-go itself: tink-go
// writes every cell the format reads and reads every cell the format writes
// (no hand-rolled Tink). The remote AEADs (the KEKs) are plain tink-go AEADs
// from in-memory keysets; their outputs carry their own 5-byte prefix,
// which the format treats as the opaque wrapped DEK it is.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/core/registry"
	"github.com/tink-crypto/tink-go/v2/keyset"
	kmsenvpb "github.com/tink-crypto/tink-go/v2/proto/kms_envelope_go_proto"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"
	"google.golang.org/protobuf/proto"

	"rekey/schemas"
	"rekey/schemas/format"
)

const (
	tinkKMSPrefix = "test-kms://"
	tinkOldURI    = tinkKMSPrefix + "old"
	tinkNewURI    = tinkKMSPrefix + "new"
	tinkKMSType   = "type.googleapis.com/google.crypto.tink.KmsEnvelopeAeadKey"
)

// testKMS is a tink KMS client serving the old and new KEKs by URI.
type testKMS struct{ aeads map[string]tink.AEAD }

func (k *testKMS) Supported(uri string) bool { return strings.HasPrefix(uri, tinkKMSPrefix) }

func (k *testKMS) GetAEAD(uri string) (tink.AEAD, error) {
	if a, ok := k.aeads[uri]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("test KMS: no key %q", uri)
}

var tinkKEKs struct {
	once     sync.Once
	old, new tink.AEAD
	err      error
}

// keks returns the old and new KEKs (AES256_GCM keyset AEADs, TINK
// prefixed), registered with tink's registry as test-kms://old and
// test-kms://new. They are made once per process.
func keks(t testing.TB) (oldKEK, newKEK tink.AEAD) {
	t.Helper()
	k := &tinkKEKs
	k.once.Do(func() {
		mk := func() tink.AEAD {
			h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
			if err != nil {
				k.err = err
				return nil
			}
			a, err := aead.New(h)
			if err != nil {
				k.err = err
			}
			return a
		}
		k.old, k.new = mk(), mk()
		if k.err == nil {
			registry.RegisterKMSClient(&testKMS{aeads: map[string]tink.AEAD{tinkOldURI: k.old, tinkNewURI: k.new}})
		}
	})
	if k.err != nil {
		t.Fatal(k.err)
	}
	return k.old, k.new
}

var ordersAAD = []byte("orders")

// envelope is tink-go's raw KMS envelope AEAD over kek.
func envelope(t testing.TB, dek *tinkpb.KeyTemplate, kek tink.AEAD) tink.AEAD {
	t.Helper()
	return aead.NewKMSEnvelopeAEAD2(dek, kek)
}

func tinkEncrypt(t testing.TB, a tink.AEAD, pt, ad []byte) []byte {
	t.Helper()
	ct, err := a.Encrypt(pt, ad)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// unwrap is what the custodian does: the KEK's decryption of a wrapped
// DEK, with the empty associated data Tink wraps DEKs under.
func unwrap(t testing.TB, kek tink.AEAD, blob []byte) []byte {
	t.Helper()
	secret, err := kek.Decrypt(blob, []byte{})
	if err != nil {
		t.Fatalf("the KEK does not open the DecodeKey blob: %v", err)
	}
	return secret
}

func tinkPlaintexts(t testing.TB) map[string][]byte {
	return map[string][]byte{"empty": {}, "short": []byte("hello, tink"), "64KiB": randBytes(t, 64<<10)}
}

func wantErr(t *testing.T, what string, err, sentinel error, words ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Errorf("%s: %v, want errors.Is %v", what, err, sentinel)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not mention %q", what, err, w)
		}
	}
}

// TestTinkRawEnvelope: cells of aead.NewKMSEnvelopeAEAD2 open through
// DecodeKey + the KEK + Cipher + Open, and a cell rewrapped with ReplaceKey
// decrypts with tink-go under the new KEK only, its payload untouched.
func TestTinkRawEnvelope(t *testing.T) {
	oldKEK, newKEK := keks(t)
	oldEnv := envelope(t, aead.AES256GCMKeyTemplate(), oldKEK)
	newEnv := envelope(t, aead.AES256GCMKeyTemplate(), newKEK)
	f := mustNew(t, "tink-envelope", map[string]string{"aad": "orders"})
	if f.Name() != "tink-envelope" || f.Keys() != format.KeyCell || f.Text() || f.KeyColumn() != "" || len(f.Needs()) != 0 {
		t.Fatalf("format shape: %s keys=%v text=%v needs=%v", f.Name(), f.Keys(), f.Text(), f.Needs())
	}
	if d := f.Describe(); !strings.Contains(d, "prefix=raw") || !strings.Contains(d, `aad="orders"`) || !strings.Contains(d, "AES256_GCM") {
		t.Errorf("Describe = %q", d)
	}
	for name, pt := range tinkPlaintexts(t) {
		t.Run(name, func(t *testing.T) {
			cell := tinkEncrypt(t, oldEnv, pt, ordersAAD)
			orig := bytes.Clone(cell)

			blob, err := f.DecodeKey(cell)
			if err != nil {
				t.Fatal(err)
			}
			n := int(binary.BigEndian.Uint32(cell))
			if !bytes.Equal(blob, cell[4:4+n]) {
				t.Fatalf("DecodeKey is not the encrypted DEK tink wrote")
			}
			payload := cell[4+n:]
			secret := unwrap(t, oldKEK, blob)
			// tink-go's serialized AesGcmKey is exactly what EncodeSecret writes.
			if want, err := f.(format.SecretEncoder).EncodeSecret(secret[2:]); err != nil || !bytes.Equal(want, secret) {
				t.Fatalf("tink's DEK %x, EncodeSecret of its key bytes %x (%v)", secret, want, err)
			}
			gcm, err := f.Cipher(secret)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.Open(nil, gcm, cell, &format.Cell{Column: "c"})
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open = %d bytes, %v; want the %d-byte plaintext", len(got), err, len(pt))
			}
			if got, err := f.Open([]byte("dst:"), gcm, cell, &format.Cell{}); err != nil || !bytes.Equal(got, append([]byte("dst:"), pt...)) {
				t.Fatalf("Open does not append to dst: %v", err)
			}

			newBlob := tinkEncrypt(t, newKEK, secret, []byte{})
			out, err := f.ReplaceKey(cell, newBlob)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cell, orig) {
				t.Fatal("ReplaceKey changed its input")
			}
			if binary.BigEndian.Uint32(out) != uint32(len(newBlob)) || !bytes.Equal(out[4:4+len(newBlob)], newBlob) {
				t.Fatalf("rewrapped cell does not carry the new blob: %x", out[:min(len(out), 8)])
			}
			if len(out) != 4+len(newBlob)+len(payload) || !bytes.HasSuffix(out, payload) {
				t.Fatal("the payload changed in ReplaceKey")
			}
			if got, err := newEnv.Decrypt(out, ordersAAD); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("tink-go with the new KEK: %v", err)
			}
			if _, err := oldEnv.Decrypt(out, ordersAAD); err == nil {
				t.Fatal("tink-go with the old KEK opened the rewrapped cell")
			}
			if _, err := newEnv.Decrypt(out, []byte("invoices")); err == nil {
				t.Fatal("the rewrapped cell opened under other associated data")
			}
			if _, err := newEnv.Decrypt(cell, ordersAAD); err == nil {
				t.Fatal("the new KEK opened the original cell")
			}
			if got, err := f.DecodeKey(out); err != nil || !bytes.Equal(got, newBlob) {
				t.Fatalf("DecodeKey of the rewrapped cell: %v", err)
			}
			if got, err := f.Open(nil, gcm, out, &format.Cell{}); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open of the rewrapped cell: %v", err)
			}
		})
	}
}

// TestTinkAADTemplate: the aad option as a template of a column value and
// the encrypted column's name, against tink-go's associated data.
func TestTinkAADTemplate(t *testing.T) {
	oldKEK, _ := keks(t)
	env := envelope(t, aead.AES256GCMKeyTemplate(), oldKEK)
	f := mustNew(t, "tink-envelope", map[string]string{"aad": "{tenant}|{$column}"})
	if got := f.Needs(); len(got) != 1 || got[0] != "tenant" {
		t.Fatalf("Needs = %v", got)
	}
	cell := tinkEncrypt(t, env, []byte("pt"), []byte("acme|email"))
	blob, err := f.DecodeKey(cell)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := f.Cipher(unwrap(t, oldKEK, blob))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := f.Open(nil, gcm, cell, &format.Cell{Column: "email", Fields: []string{"acme"}}); err != nil || string(got) != "pt" {
		t.Fatalf("Open: %q %v", got, err)
	}
	for _, c := range []*format.Cell{{Column: "email", Fields: []string{"acme2"}}, {Column: "phone", Fields: []string{"acme"}}} {
		if _, err := f.Open(nil, gcm, cell, c); !errors.Is(err, format.ErrCellAuth) {
			t.Errorf("Open under %s/%v: %v, want ErrCellAuth", c.Column, c.Fields, err)
		}
	}
	// Seal writes the same associated data tink-go reads.
	c := &format.Cell{Column: "email", Fields: []string{"acme"}, Key: blob}
	sealed, err := f.Seal(nil, gcm, rand.Reader, []byte("again"), c)
	if err != nil {
		t.Fatal(err)
	}
	if string(c.AAD) != "acme|email" {
		t.Errorf("Cell.AAD = %q", c.AAD)
	}
	if got, err := env.Decrypt(sealed, []byte("acme|email")); err != nil || string(got) != "again" {
		t.Fatalf("tink-go: %q %v", got, err)
	}
}

// kmsKeyset is a one-key keyset of a KmsEnvelopeAeadKey for uri with the
// given key id and output prefix, as tink's keyset tooling would write it.
func kmsKeyset(t testing.TB, uri string, dek *tinkpb.KeyTemplate, id uint32, prefix tinkpb.OutputPrefixType) *keyset.Handle {
	t.Helper()
	key, err := proto.Marshal(&kmsenvpb.KmsEnvelopeAeadKey{Params: &kmsenvpb.KmsEnvelopeAeadKeyFormat{KekUri: uri, DekTemplate: dek}})
	if err != nil {
		t.Fatal(err)
	}
	h, err := keyset.NewHandleWithNoSecrets(&tinkpb.Keyset{PrimaryKeyId: id, Key: []*tinkpb.Keyset_Key{{
		KeyData:          &tinkpb.KeyData{TypeUrl: tinkKMSType, Value: key, KeyMaterialType: tinkpb.KeyData_REMOTE},
		Status:           tinkpb.KeyStatusType_ENABLED,
		KeyId:            id,
		OutputPrefixType: prefix,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// withKEK is h with its (one) key's KEK URI changed: the same key id and
// output prefix, what a keyset looks like after its KEK is rotated.
func withKEK(t testing.TB, h *keyset.Handle, uri string) *keyset.Handle {
	t.Helper()
	mem := &keyset.MemReaderWriter{}
	if err := h.WriteWithNoSecrets(mem); err != nil {
		t.Fatal(err)
	}
	ks := proto.Clone(mem.Keyset).(*tinkpb.Keyset)
	for _, k := range ks.Key {
		var key kmsenvpb.KmsEnvelopeAeadKey
		if err := proto.Unmarshal(k.KeyData.Value, &key); err != nil {
			t.Fatal(err)
		}
		key.Params.KekUri = uri
		v, err := proto.Marshal(&key)
		if err != nil {
			t.Fatal(err)
		}
		k.KeyData.Value = v
	}
	nh, err := keyset.NewHandleWithNoSecrets(ks)
	if err != nil {
		t.Fatal(err)
	}
	return nh
}

func primitive(t testing.TB, h *keyset.Handle) tink.AEAD {
	t.Helper()
	a, err := aead.New(h)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestTinkKeysetPrefix: cells of a KmsEnvelopeAeadKey keyset with output
// prefix TINK, LEGACY and CRUNCHY: prefix and key_id select them, the raw
// parser refuses them, and after ReplaceKey the keyset with the same key id
// but the new KEK's URI decrypts them.
func TestTinkKeysetPrefix(t *testing.T) {
	oldKEK, newKEK := keks(t)
	for _, tc := range []struct {
		out    tinkpb.OutputPrefixType
		prefix string
		first  byte
		other  string // the prefix option that must refuse these cells
	}{
		{tinkpb.OutputPrefixType_TINK, "tink", 0x01, "legacy"},
		{tinkpb.OutputPrefixType_LEGACY, "legacy", 0x00, "tink"},
		{tinkpb.OutputPrefixType_CRUNCHY, "legacy", 0x00, "tink"},
	} {
		t.Run(tc.out.String(), func(t *testing.T) {
			tmpl, err := aead.CreateKMSEnvelopeAEADKeyTemplate(tinkOldURI, aead.AES128GCMKeyTemplate())
			if err != nil {
				t.Fatal(err)
			}
			tmpl.OutputPrefixType = tc.out
			h, err := keyset.NewHandle(tmpl)
			if err != nil {
				t.Fatal(err)
			}
			id := h.KeysetInfo().GetPrimaryKeyId()
			oldP := primitive(t, h)
			pt := []byte("keyset plaintext")
			cell := tinkEncrypt(t, oldP, pt, ordersAAD)
			if cell[0] != tc.first || binary.BigEndian.Uint32(cell[1:5]) != id {
				t.Fatalf("tink wrote prefix %x, want %02x and key id %d", cell[:5], tc.first, id)
			}

			f := mustNew(t, "tink-envelope", map[string]string{"prefix": tc.prefix, "aad": "orders"})
			blob, err := f.DecodeKey(cell)
			if err != nil {
				t.Fatal(err)
			}
			secret := unwrap(t, oldKEK, blob)
			if len(secret) != 2+16 {
				t.Fatalf("an AES128_GCM DEK serializes to %d bytes", len(secret))
			}
			gcm, err := f.Cipher(secret)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := f.Open(nil, gcm, cell, &format.Cell{}); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open: %q %v", got, err)
			}

			fid := mustNew(t, "tink-envelope", map[string]string{"prefix": tc.prefix, "key_id": strconv.FormatUint(uint64(id), 10)})
			if got, err := fid.DecodeKey(cell); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("key_id %d: %v", id, err)
			}
			other := strconv.FormatUint(uint64(id^1), 10)
			_, err = mustNew(t, "tink-envelope", map[string]string{"prefix": tc.prefix, "key_id": other}).DecodeKey(cell)
			wantErr(t, "another key_id", err, format.ErrTinkEnvelope, strconv.FormatUint(uint64(id), 10), other)
			_, err = mustNew(t, "tink-envelope", nil).DecodeKey(cell)
			wantErr(t, "prefix raw", err, format.ErrTinkEnvelope, "encrypted DEK length", "prefix")
			_, err = mustNew(t, "tink-envelope", map[string]string{"prefix": tc.other}).DecodeKey(cell)
			wantErr(t, "prefix "+tc.other, err, format.ErrTinkEnvelope, "output prefix byte")

			out, err := f.ReplaceKey(cell, tinkEncrypt(t, newKEK, secret, []byte{}))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out[:5], cell[:5]) {
				t.Fatalf("output prefix %x became %x", cell[:5], out[:5])
			}
			if !bytes.HasSuffix(out, cell[4+5+len(blob):]) {
				t.Fatal("payload changed")
			}
			newP := primitive(t, withKEK(t, h, tinkNewURI))
			if got, err := newP.Decrypt(out, ordersAAD); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("the keyset with the new KEK: %q %v", got, err)
			}
			if _, err := oldP.Decrypt(out, ordersAAD); err == nil {
				t.Fatal("the keyset with the old KEK opened the rewrapped cell")
			}
			if _, err := newP.Decrypt(cell, ordersAAD); err == nil {
				t.Fatal("the keyset with the new KEK opened the original cell")
			}
			// And without the keyset: the bare envelope after the prefix.
			if got, err := envelope(t, aead.AES128GCMKeyTemplate(), newKEK).Decrypt(out[5:], ordersAAD); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("NewKMSEnvelopeAEAD2 on the unprefixed cell: %v", err)
			}
		})
	}
}

// TestTinkSeal: cells Seal writes (reencryption into the format) decrypt
// with tink-go: the raw envelope, a TINK-prefixed keyset with the job's
// key_id, and AES128_GCM DEKs.
func TestTinkSeal(t *testing.T) {
	_, newKEK := keks(t)
	pt := []byte("sealed by rekey")
	seal := func(t *testing.T, f format.Format) ([]byte, []byte, *format.Cell) {
		t.Helper()
		key := randBytes(t, 32)
		secret, err := f.(format.SecretEncoder).EncodeSecret(key)
		if err != nil {
			t.Fatal(err)
		}
		gcm, err := f.Cipher(secret)
		if err != nil {
			t.Fatal(err)
		}
		c := &format.Cell{Key: tinkEncrypt(t, newKEK, secret, []byte{}), Column: "c"}
		cell, err := f.Seal(nil, gcm, rand.Reader, pt, c)
		if err != nil {
			t.Fatal(err)
		}
		if n := f.CellLen(len(pt)); len(cell) > n {
			t.Errorf("CellLen(%d) = %d, the cell is %d bytes", len(pt), n, len(cell))
		}
		if n := f.MaxPlaintext(len(cell)); n < len(pt) {
			t.Errorf("MaxPlaintext(%d) = %d < %d", len(cell), n, len(pt))
		}
		if got, err := f.Open(nil, gcm, cell, &format.Cell{}); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Open of a sealed cell: %v", err)
		}
		if blob, err := f.DecodeKey(cell); err != nil || !bytes.Equal(blob, c.Key) {
			t.Fatalf("DecodeKey of a sealed cell: %v", err)
		}
		return cell, secret, c
	}

	t.Run("raw", func(t *testing.T) {
		f := mustNew(t, "tink-envelope", map[string]string{"aad": "orders"})
		cell, secret, c := seal(t, f)
		if len(secret) != 34 || secret[0] != 0x1a || secret[1] != 32 {
			t.Fatalf("AES256_GCM secret %x", secret[:2])
		}
		if !bytes.Equal(c.Tag, cell[len(cell)-16:]) {
			t.Fatalf("Cell.Tag %x, the cell ends %x", c.Tag, cell[len(cell)-16:])
		}
		if got, err := envelope(t, aead.AES256GCMKeyTemplate(), newKEK).Decrypt(cell, ordersAAD); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("tink-go: %q %v", got, err)
		}
		if _, err := envelope(t, aead.AES256GCMKeyTemplate(), newKEK).Decrypt(cell, nil); err == nil {
			t.Fatal("tink-go opened the cell without its associated data")
		}
		// Seal appends to dst.
		gcm, _ := f.Cipher(secret)
		got, err := f.Seal([]byte("dst:"), gcm, rand.Reader, pt, c)
		if err != nil || !bytes.HasPrefix(got, []byte("dst:")) {
			t.Fatalf("Seal does not append to dst: %v", err)
		}
		if _, err := envelope(t, aead.AES256GCMKeyTemplate(), newKEK).Decrypt(got[4:], ordersAAD); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("tink-key-id", func(t *testing.T) {
		f := mustNew(t, "tink-envelope", map[string]string{"prefix": "tink", "key_id": "12345", "aad": "orders"})
		cell, _, c := seal(t, f)
		if want := []byte{0x01, 0x00, 0x00, 0x30, 0x39}; !bytes.HasPrefix(cell, want) {
			t.Fatalf("cell starts %x, want %x", cell[:5], want)
		}
		if !bytes.Equal(c.Tag, cell[len(cell)-16:]) {
			t.Fatal("Cell.Tag is not the cell's last 16 bytes")
		}
		if got, err := envelope(t, aead.AES256GCMKeyTemplate(), newKEK).Decrypt(cell[5:], ordersAAD); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("tink-go on the unprefixed cell: %v", err)
		}
		p := primitive(t, kmsKeyset(t, tinkNewURI, aead.AES256GCMKeyTemplate(), 12345, tinkpb.OutputPrefixType_TINK))
		if got, err := p.Decrypt(cell, ordersAAD); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("the keyset with key 12345: %q %v", got, err)
		}
		p = primitive(t, kmsKeyset(t, tinkNewURI, aead.AES256GCMKeyTemplate(), 12346, tinkpb.OutputPrefixType_TINK))
		if _, err := p.Decrypt(cell, ordersAAD); err == nil {
			t.Fatal("a keyset with key 12346 opened a key-12345 cell")
		}
	})

	t.Run("legacy-key-id", func(t *testing.T) {
		f := mustNew(t, "tink-envelope", map[string]string{"prefix": "legacy", "key_id": "4000000000", "aad": "orders"})
		cell, _, _ := seal(t, f)
		p := primitive(t, kmsKeyset(t, tinkNewURI, aead.AES256GCMKeyTemplate(), 4000000000, tinkpb.OutputPrefixType_LEGACY))
		if got, err := p.Decrypt(cell, ordersAAD); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("the LEGACY keyset: %q %v", got, err)
		}
	})

	t.Run("AES128_GCM", func(t *testing.T) {
		f := mustNew(t, "tink-envelope", map[string]string{"dek_template": "AES128_GCM", "aad": "orders"})
		if !strings.Contains(f.Describe(), "AES128_GCM") {
			t.Errorf("Describe = %q", f.Describe())
		}
		cell, secret, _ := seal(t, f)
		if len(secret) != 18 || secret[0] != 0x1a || secret[1] != 16 {
			t.Fatalf("AES128_GCM secret %x", secret)
		}
		if got, err := envelope(t, aead.AES128GCMKeyTemplate(), newKEK).Decrypt(cell, ordersAAD); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("tink-go with the AES128_GCM template: %v", err)
		}
		if _, err := f.(format.SecretEncoder).EncodeSecret(make([]byte, 8)); err == nil {
			t.Fatal("EncodeSecret took 8 key bytes")
		}
	})

	t.Run("no-key", func(t *testing.T) {
		f := mustNew(t, "tink-envelope", nil)
		secret, _ := f.(format.SecretEncoder).EncodeSecret(randBytes(t, 32))
		gcm, err := f.Cipher(secret)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range [][]byte{nil, make([]byte, 4097)} {
			if _, err := f.Seal(nil, gcm, rand.Reader, pt, &format.Cell{Key: k}); err == nil {
				t.Errorf("Seal with a %d-byte wrapped DEK", len(k))
			}
		}
	})
}

// TestTinkEncodings: text-encoded cells round-trip through DecodeKey,
// Open, ReplaceKey (whose output is in the same encoding) and Seal.
func TestTinkEncodings(t *testing.T) {
	oldKEK, newKEK := keks(t)
	oldEnv := envelope(t, aead.AES256GCMKeyTemplate(), oldKEK)
	newEnv := envelope(t, aead.AES256GCMKeyTemplate(), newKEK)
	for name, enc := range map[string]struct {
		enc func([]byte) string
		dec func(string) ([]byte, error)
	}{
		"base64":        {base64.StdEncoding.EncodeToString, base64.StdEncoding.Strict().DecodeString},
		"base64-raw":    {base64.RawStdEncoding.EncodeToString, base64.RawStdEncoding.Strict().DecodeString},
		"base64url":     {base64.URLEncoding.EncodeToString, base64.URLEncoding.Strict().DecodeString},
		"base64url-raw": {base64.RawURLEncoding.EncodeToString, base64.RawURLEncoding.Strict().DecodeString},
		"hex":           {hex.EncodeToString, hex.DecodeString},
	} {
		t.Run(name, func(t *testing.T) {
			f := mustNew(t, "tink-envelope", map[string]string{"encoding": name, "aad": "orders"})
			if !f.Text() || !f.KeyText() {
				t.Fatal("a text encoding is not Text")
			}
			pt := []byte("encoded " + name)
			raw := tinkEncrypt(t, oldEnv, pt, ordersAAD)
			cell := []byte(enc.enc(raw))
			blob, err := f.DecodeKey(cell)
			if err != nil {
				t.Fatal(err)
			}
			secret := unwrap(t, oldKEK, blob)
			gcm, err := f.Cipher(secret)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := f.Open(nil, gcm, cell, &format.Cell{}); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open: %v", err)
			}
			out, err := f.ReplaceKey(cell, tinkEncrypt(t, newKEK, secret, []byte{}))
			if err != nil {
				t.Fatal(err)
			}
			outRaw, err := enc.dec(string(out))
			if err != nil {
				t.Fatalf("ReplaceKey output is not %s: %v", name, err)
			}
			if !bytes.HasSuffix(outRaw, raw[4+len(blob):]) {
				t.Fatal("payload changed")
			}
			if got, err := newEnv.Decrypt(outRaw, ordersAAD); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("tink-go on the rewrapped cell: %v", err)
			}
			if got, err := f.Open(nil, gcm, out, &format.Cell{}); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open of the rewrapped cell: %v", err)
			}
			sealed, err := f.Seal(nil, gcm, rand.Reader, pt, &format.Cell{Key: blob})
			if err != nil {
				t.Fatal(err)
			}
			sealedRaw, err := enc.dec(string(sealed))
			if err != nil {
				t.Fatalf("Seal output is not %s: %v", name, err)
			}
			if got, err := oldEnv.Decrypt(sealedRaw, ordersAAD); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("tink-go on the sealed cell: %v", err)
			}
			_, err = f.DecodeKey(raw)
			wantErr(t, "a raw cell", err, format.ErrCellEncoding)
		})
	}
}

// TestTinkRefusals: what the format refuses, each error naming why.
func TestTinkRefusals(t *testing.T) {
	oldKEK, _ := keks(t)
	f := mustNew(t, "tink-envelope", map[string]string{"aad": "orders"})

	t.Run("other-DEK-types", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			tmpl  *tinkpb.KeyTemplate
			words []string // nil: Cipher accepts it (it looks like an AES-GCM key) and Open fails
		}{
			{"AES128_CTR_HMAC_SHA256", aead.AES128CTRHMACSHA256KeyTemplate(), []string{"AES-CTR-HMAC", "AES128_GCM"}},
			{"AES256_CTR_HMAC_SHA256", aead.AES256CTRHMACSHA256KeyTemplate(), []string{"AES-CTR-HMAC"}},
			{"CHACHA20_POLY1305", aead.ChaCha20Poly1305KeyTemplate(), []string{"field 2"}},
			{"XCHACHA20_POLY1305", aead.XChaCha20Poly1305KeyTemplate(), nil},
			{"AES256_GCM_SIV", aead.AES256GCMSIVKeyTemplate(), nil},
		} {
			cell := tinkEncrypt(t, envelope(t, tc.tmpl, oldKEK), []byte("x"), ordersAAD)
			blob, err := f.DecodeKey(cell) // the envelope itself is the same
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			secret := unwrap(t, oldKEK, blob)
			gcm, err := f.Cipher(secret)
			if tc.words != nil {
				wantErr(t, tc.name, err, format.ErrTinkKeyType, tc.words...)
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			_, err = f.Open(nil, gcm, cell, &format.Cell{})
			wantErr(t, tc.name+" opened as AES-GCM", err, format.ErrCellAuth, "not supported")
		}
	})

	t.Run("secrets", func(t *testing.T) {
		for name, secret := range map[string][]byte{
			"bare AES key": key32,
			"empty":        {},
			"version 1":    append([]byte{0x08, 0x01, 0x1a, 0x10}, make([]byte, 16)...),
			"24-byte key":  append([]byte{0x1a, 24}, make([]byte, 24)...),
			"short field":  {0x1a, 0x20, 1, 2, 3},
			"bad varint":   {0x80},
		} {
			_, err := f.Cipher(secret)
			wantErr(t, name, err, format.ErrTinkKeyType)
		}
	})

	t.Run("options", func(t *testing.T) {
		for _, tc := range []struct {
			opts  map[string]string
			words []string
		}{
			{map[string]string{"dek_template": "XCHACHA20_POLY1305"}, []string{"dek_template", "XCHACHA20_POLY1305", "not supported"}},
			{map[string]string{"dek_template": "AES128_CTR_HMAC_SHA256"}, []string{"AES128_CTR_HMAC_SHA256", "not supported"}},
			{map[string]string{"dek_template": "AES512_GCM"}, []string{"AES512_GCM", "AES256_GCM"}},
			{map[string]string{"prefix": "crunchy"}, []string{"prefix", "crunchy"}},
			{map[string]string{"key_id": "7"}, []string{"key_id", "raw"}},
			{map[string]string{"prefix": "tink", "key_id": "x7"}, []string{"key_id", "x7"}},
			{map[string]string{"prefix": "tink", "key_id": "4294967296"}, []string{"key_id", "4294967296"}},
			{map[string]string{"encoding": "rot13"}, []string{"encoding", "rot13"}},
			{map[string]string{"aad": "{unclosed"}, []string{"aad", "unclosed"}},
			{map[string]string{"nonce_size": "12"}, []string{"unknown option", "nonce_size"}},
		} {
			_, err := format.New("tink-envelope", tc.opts)
			wantErr(t, fmt.Sprint(tc.opts), err, nil, tc.words...)
		}
	})

	cell := tinkEncrypt(t, envelope(t, aead.AES256GCMKeyTemplate(), oldKEK), []byte("some plaintext"), ordersAAD)
	n := int(binary.BigEndian.Uint32(cell))
	blob := cell[4 : 4+n]
	gcm, err := f.Cipher(unwrap(t, oldKEK, blob))
	if err != nil {
		t.Fatal(err)
	}
	withLen := func(l uint32) []byte {
		c := bytes.Clone(cell)
		binary.BigEndian.PutUint32(c, l)
		return c
	}

	t.Run("malformed", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			cell  []byte
			words []string
		}{
			{"empty", nil, []string{"too short"}},
			{"length only", cell[:4], []string{"too short"}},
			{"truncated in the DEK", cell[:4+n-1], []string{"encrypted DEK length"}},
			{"no payload", cell[:4+n], []string{"shorter than an AES-GCM IV and tag"}},
			{"payload of 27 bytes", cell[:4+n+27], []string{"shorter than an AES-GCM IV and tag"}},
			{"length past the end", withLen(uint32(len(cell))), []string{"encrypted DEK length", strconv.Itoa(len(cell))}},
			{"length 0xffffffff", withLen(0xffffffff), []string{"encrypted DEK length"}},
			{"length 4097", append(withLen(4097), make([]byte, 8192)...), []string{"encrypted DEK length 4097", "4096"}},
			{"length 0", withLen(0), []string{"encrypted DEK length 0"}},
		} {
			_, err := f.DecodeKey(tc.cell)
			wantErr(t, tc.name+": DecodeKey", err, format.ErrTinkEnvelope, tc.words...)
			_, err = f.ReplaceKey(tc.cell, blob)
			wantErr(t, tc.name+": ReplaceKey", err, format.ErrTinkEnvelope, tc.words...)
			_, err = f.Open(nil, gcm, tc.cell, &format.Cell{})
			wantErr(t, tc.name+": Open", err, format.ErrTinkEnvelope, tc.words...)
		}
		_, err := mustNew(t, "tink-envelope", map[string]string{"prefix": "tink"}).DecodeKey(cell[:3])
		wantErr(t, "short prefix", err, format.ErrTinkEnvelope, "output prefix")
	})

	t.Run("authentication", func(t *testing.T) {
		if got, err := f.Open(nil, gcm, cell, &format.Cell{}); err != nil || string(got) != "some plaintext" {
			t.Fatalf("the good cell: %v", err)
		}
		for name, c := range map[string][]byte{
			"one byte short": cell[:len(cell)-1],
			"flipped tag":    append(bytes.Clone(cell[:len(cell)-1]), cell[len(cell)-1]^1),
		} {
			_, err := f.Open(nil, gcm, c, &format.Cell{})
			wantErr(t, name, err, format.ErrCellAuth)
		}
		for _, aad := range []string{"invoices", "Orders", ""} {
			fa := mustNew(t, "tink-envelope", map[string]string{"aad": aad})
			_, err := fa.Open(nil, gcm, cell, &format.Cell{})
			wantErr(t, "aad "+strconv.Quote(aad), err, format.ErrCellAuth)
		}
	})

	t.Run("new-blob", func(t *testing.T) {
		for _, b := range [][]byte{nil, {}, make([]byte, 4097)} {
			_, err := f.ReplaceKey(cell, b)
			wantErr(t, fmt.Sprintf("a %d-byte blob", len(b)), err, nil, "wrapped DEK", strconv.Itoa(len(b)))
		}
		if _, err := f.ReplaceKey(cell, make([]byte, 4096)); err != nil {
			t.Errorf("a 4096-byte blob: %v", err)
		}
	})

	t.Run("too-large", func(t *testing.T) {
		_, err := f.DecodeKey(make([]byte, schemas.MaxCellBytes+5+4+4096+12+16+1))
		wantErr(t, "oversized cell", err, schemas.ErrCellTooLarge)
	})
}

// FuzzTinkSplit: arbitrary bytes through DecodeKey, ReplaceKey and Open of
// each prefix and an encoding never panic; whatever DecodeKey takes,
// ReplaceKey takes and swaps the wrapped DEK alone (the rewrapped cell
// opens exactly when the original does).
func FuzzTinkSplit(f *testing.F) {
	oldKEK, _ := keks(f)
	fmts := []format.Format{
		mustNew(f, "tink-envelope", map[string]string{"aad": "orders"}),
		mustNew(f, "tink-envelope", map[string]string{"prefix": "tink", "aad": "orders"}),
		mustNew(f, "tink-envelope", map[string]string{"prefix": "legacy", "key_id": "42"}),
		mustNew(f, "tink-envelope", map[string]string{"encoding": "base64", "aad": "orders"}),
	}
	raw := tinkEncrypt(f, envelope(f, aead.AES256GCMKeyTemplate(), oldKEK), []byte("fuzz seed"), ordersAAD)
	secret := unwrap(f, oldKEK, raw[4:4+binary.BigEndian.Uint32(raw)])
	gcm, err := fmts[0].Cipher(secret)
	if err != nil {
		f.Fatal(err)
	}
	tmpl, err := aead.CreateKMSEnvelopeAEADKeyTemplate(tinkOldURI, aead.AES256GCMKeyTemplate())
	if err != nil {
		f.Fatal(err)
	}
	tmpl.OutputPrefixType = tinkpb.OutputPrefixType_TINK
	h, err := keyset.NewHandle(tmpl)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw, uint8(0))
	f.Add(tinkEncrypt(f, primitive(f, h), []byte("fuzz seed"), ordersAAD), uint8(1))
	f.Add(append([]byte{0, 0, 0, 0, 42}, raw...), uint8(2))
	f.Add([]byte(base64.StdEncoding.EncodeToString(raw)), uint8(3))
	f.Add([]byte{0, 0, 0, 1, 0}, uint8(0))
	f.Add([]byte{0x1a, 0x20}, uint8(0))
	newBlob := []byte("a new wrapped DEK")
	f.Fuzz(func(t *testing.T, cell []byte, which uint8) {
		fm := fmts[int(which)%len(fmts)]
		_, _ = fm.Cipher(cell)
		blob, decErr := fm.DecodeKey(cell)
		out, repErr := fm.ReplaceKey(cell, newBlob)
		if (decErr == nil) != (repErr == nil) {
			t.Fatalf("DecodeKey err %v, ReplaceKey err %v", decErr, repErr)
		}
		pt, openErr := fm.Open(nil, gcm, cell, &format.Cell{})
		if decErr != nil {
			if openErr == nil {
				t.Fatalf("Open took a cell DecodeKey refuses (%v)", decErr)
			}
			return
		}
		if len(blob) == 0 || len(blob) > 4096 {
			t.Fatalf("DecodeKey gave a %d-byte blob", len(blob))
		}
		if got, err := fm.DecodeKey(out); err != nil || !bytes.Equal(got, newBlob) {
			t.Fatalf("DecodeKey of the rewrapped cell: %q %v", got, err)
		}
		pt2, openErr2 := fm.Open(nil, gcm, out, &format.Cell{})
		if (openErr == nil) != (openErr2 == nil) || !bytes.Equal(pt, pt2) {
			t.Fatalf("Open before ReplaceKey: %v, after: %v", openErr, openErr2)
		}
	})
}
