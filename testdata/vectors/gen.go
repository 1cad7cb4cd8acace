//go:build ignore

// Command gen writes the known-answer vectors of rekey's on-disk bytes
// (docs/FORMAT.md), so that a change that alters them fails a test:
//
//   - formats.json: cells of every cell format (package schemas/format),
//     made with Format.Seal from a fixed key, nonce and plaintext;
//     schemas/format/vectors_test.go opens and re-seals them.
//   - wraps.json: wrapped DEKs of every PKCS#11 wrap mechanism, computed here
//     in software from the definitions (AES-GCM, RFC 5649 AES key wrap with
//     padding, RSA-OAEP per RFC 8017 with a fixed seed) under fixed KEKs;
//     hsmio/vectors_test.go imports the KEKs into SoftHSM and unwraps them.
//   - rsa-kek.pem: the RSA-2048 test KEK of the rsa-oaep-* vectors, PKCS#8.
//     A test key, published here: never use it for anything else.
//
// All randomness comes from fixed ChaCha8 streams and the RSA primes are
// searched deterministically from one, so every run writes the same bytes:
//
//	go run ./testdata/vectors/gen.go
package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // RSA-OAEP-SHA1 is one of the wrap mechanisms.
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash"
	"io"
	"log"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"rekey/schemas"
	"rekey/schemas/format"
)

// formatVector is one cell: the format and its options, the cell's key,
// nonce and context, the plaintext, and the cell.
type formatVector struct {
	Name     string            `json:"name"`
	Format   string            `json:"format"`
	Options  map[string]string `json:"options"`
	Key      string            `json:"key"`   // hex
	Nonce    string            `json:"nonce"` // hex: the bytes Seal reads from its random source
	Column   string            `json:"column"`
	RecordID string            `json:"record_id"`
	DEKID    string            `json:"dek_id"`
	Row      map[string]string `json:"row,omitempty"` // values of the columns the format Needs
	Plain    string            `json:"plaintext"`     // hex
	Cell     string            `json:"cell"`          // hex of the cell's bytes
	CellText string            `json:"cell_text,omitempty"`
	// WrappedKey is the wrapped DEK a KeyCell format (tink-envelope)
	// carries in the cell: opaque bytes here (a custodian's output).
	WrappedKey string `json:"wrapped_key,omitempty"`
}

type binding struct {
	DEKID   string            `json:"dek_id,omitempty"`
	Context map[string]string `json:"context,omitempty"`
	AAD     []string          `json:"aad,omitempty"`
}

// wrapVector is one wrapped DEK.
type wrapVector struct {
	Name      string   `json:"name"`
	Mechanism string   `json:"mechanism"`
	KEK       string   `json:"kek"` // "aes" (aes_kek) or "rsa" (rsa_kek)
	DEK       string   `json:"dek"` // hex
	Binding   *binding `json:"binding,omitempty"`
	AAD       string   `json:"aad,omitempty"`   // hex: the AES-GCM additional data the binding gives
	Nonce     string   `json:"nonce,omitempty"` // hex: the AES-GCM nonce
	Seed      string   `json:"seed,omitempty"`  // hex: the RSA-OAEP seed
	Wrapped   string   `json:"wrapped"`         // hex
}

type wrapFile struct {
	Comment string       `json:"comment"`
	AESKEK  string       `json:"aes_kek"` // hex, AES-256
	RSAKEK  string       `json:"rsa_kek"` // file name of the PKCS#8 PEM
	Vectors []wrapVector `json:"vectors"`
}

func main() {
	_, self, _, _ := runtime.Caller(0)
	dir := filepath.Dir(self)
	rng := mrand.NewChaCha8([32]byte{'r', 'e', 'k', 'e', 'y', ' ', 'v', 'e', 'c', 't', 'o', 'r', 's'})
	write(filepath.Join(dir, "formats.json"), formatVectors(rng))
	wf, pemBytes := wrapVectors(rng)
	write(filepath.Join(dir, "wraps.json"), wf)
	if err := os.WriteFile(filepath.Join(dir, wf.RSAKEK), pemBytes, 0o644); err != nil {
		log.Fatal(err)
	}
}

func write(path string, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}

func random(rng io.Reader, n int) []byte {
	b := make([]byte, n)
	_, _ = rng.Read(b)
	return b
}

// formatVectors seals cells with the formats' own code: the vectors pin
// today's bytes. rekey-v1 cells are also rebuilt from docs/FORMAT.md.
func formatVectors(rng io.Reader) []formatVector {
	type cfg struct {
		name    string
		format  string
		opts    map[string]string
		keySize int
	}
	cfgs := []cfg{
		{"rekey-v1", "rekey-v1", map[string]string{}, 32},
		{"aes-gcm default", "aes-gcm", map[string]string{}, 32},
		{"aes-gcm base64 aad {id}", "aes-gcm", map[string]string{"encoding": "base64", "aad": "{id}"}, 32},
		{"aes-gcm hex ciphertext,tag,nonce", "aes-gcm", map[string]string{"encoding": "hex", "layout": "ciphertext,tag,nonce"}, 32},
		{"aes-gcm prefix v1: nonce 16", "aes-gcm", map[string]string{"prefix": "v1:", "nonce_size": "16"}, 32},
		{"aes-gcm prefix_hex 01 tag before ciphertext base64url-raw", "aes-gcm", map[string]string{"prefix_hex": "01", "layout": "nonce,tag,ciphertext", "encoding": "base64url-raw"}, 32},
		{"aes-gcm aad {$column} two columns", "aes-gcm", map[string]string{"aad": "{$column}|{tenant}|{id}{{v1}}", "encoding": "base64-raw"}, 32},
		{"aes-gcm tag 12", "aes-gcm", map[string]string{"tag_size": "12"}, 32},
		{"aes-gcm AES-128 base64url iv,ct,tag", "aes-gcm", map[string]string{"encoding": "base64url", "layout": "iv,ct,tag"}, 16},
		{"aes-gcm AES-192 tag,nonce,ciphertext", "aes-gcm", map[string]string{"layout": "tag,nonce,ciphertext", "tag_size": "14", "prefix": "enc:"}, 24},
		{"aes-gcm keys column", "aes-gcm", map[string]string{"keys": "column", "key_column": "wrapped_key", "key_encoding": "base64", "binding_context": "tenant={tenant}", "aad": "{tenant}", "encoding": "hex"}, 32},
	}
	type ctx struct{ column, recordID, dekID string }
	cells := []struct {
		ctx
		plain []byte
	}{
		{ctx{"payload", "42", "dek-0000001"}, []byte("hello, rekey")},
		{ctx{"email", "-7", "tenant-ü@run-1"}, nil}, // empty plaintext
		{ctx{"payload", "rec\x00ord", "d"}, random(rng, 67)},
	}
	rows := []map[string]string{{"tenant": "acme", "id": "42"}, {"tenant": "ü", "id": "-7"}, {"tenant": "", "id": "rec\x00ord"}}
	var out []formatVector
	for _, c := range cfgs {
		f, err := format.New(c.format, c.opts)
		if err != nil {
			log.Fatalf("%s: %v", c.name, err)
		}
		key := random(rng, c.keySize)
		aead, err := f.Cipher(key)
		if err != nil {
			log.Fatalf("%s: %v", c.name, err)
		}
		for i, cc := range cells {
			nonceLen := 12
			if c.opts["nonce_size"] == "16" {
				nonceLen = 16
			}
			nonce := random(rng, nonceLen)
			v := formatVector{
				Name: fmt.Sprintf("%s #%d", c.name, i+1), Format: f.Name(), Options: c.opts,
				Key: hex.EncodeToString(key), Nonce: hex.EncodeToString(nonce),
				Column: cc.column, RecordID: cc.recordID, DEKID: cc.dekID, Plain: hex.EncodeToString(cc.plain),
			}
			cell := &format.Cell{Column: cc.column, RecordID: cc.recordID, DEKID: cc.dekID}
			if f.Keys() == format.KeyColumn {
				cell.DEKID, v.DEKID = "", ""
			}
			if len(f.Needs()) > 0 {
				v.Row = map[string]string{}
				for _, n := range f.Needs() {
					val, ok := rows[i][n]
					if !ok {
						log.Fatalf("%s: no value for column %q", c.name, n)
					}
					v.Row[n] = val
					cell.Fields = append(cell.Fields, val)
				}
			}
			nr := bytes.NewReader(nonce)
			b, err := f.Seal(nil, aead, nr, cc.plain, cell)
			if err != nil || nr.Len() != 0 {
				log.Fatalf("%s: seal: %v (%d nonce bytes unread)", v.Name, err, nr.Len())
			}
			if c.format == "rekey-v1" {
				if want := rekeyV1Cell(key, nonce, cc.plain, cc.column, cc.recordID, cc.dekID); !bytes.Equal(b, want) {
					log.Fatalf("%s: Seal disagrees with docs/FORMAT.md", v.Name)
				}
			}
			if pt, err := f.Open(nil, aead, b, &format.Cell{Column: cell.Column, RecordID: cell.RecordID, DEKID: cell.DEKID, Fields: cell.Fields}); err != nil || !bytes.Equal(pt, cc.plain) {
				log.Fatalf("%s: open: %v", v.Name, err)
			}
			v.Cell = hex.EncodeToString(b)
			if f.Text() {
				v.CellText = string(b)
			}
			out = append(out, v)
		}
	}
	return append(out, tinkVectors()...)
}

// tinkVectors are tink-envelope cells, from their own seed so that adding
// them left every earlier vector (and wraps.json) byte for byte the same.
// The secret is a serialized AES-GCM key, the wrapped DEK opaque bytes.
func tinkVectors() []formatVector {
	rng := mrand.NewChaCha8([32]byte{'r', 'e', 'k', 'e', 'y', ' ', 't', 'i', 'n', 'k'})
	cfgs := []struct {
		name string
		opts map[string]string
		size int
	}{
		{"tink-envelope raw", map[string]string{}, 32},
		{"tink-envelope prefix tink key_id 12345 aad orders", map[string]string{"prefix": "tink", "key_id": "12345", "aad": "orders"}, 32},
		{"tink-envelope legacy AES128_GCM base64 aad {tenant}|{$column}", map[string]string{"prefix": "legacy", "key_id": "7", "dek_template": "AES128_GCM", "encoding": "base64", "aad": "{tenant}|{$column}"}, 16},
	}
	var out []formatVector
	for _, c := range cfgs {
		f, err := format.New("tink-envelope", c.opts)
		if err != nil {
			log.Fatalf("%s: %v", c.name, err)
		}
		secret, err := f.(format.SecretEncoder).EncodeSecret(random(rng, c.size))
		if err != nil {
			log.Fatal(err)
		}
		aead, err := f.Cipher(secret)
		if err != nil {
			log.Fatal(err)
		}
		for i, pt := range [][]byte{[]byte("hello, tink"), nil, random(rng, 67)} {
			wrapped, nonce := random(rng, 40+i*50), random(rng, 12)
			v := formatVector{Name: fmt.Sprintf("%s #%d", c.name, i+1), Format: "tink-envelope", Options: c.opts,
				Key: hex.EncodeToString(secret), Nonce: hex.EncodeToString(nonce), Column: "email", RecordID: "42",
				Plain: hex.EncodeToString(pt), WrappedKey: hex.EncodeToString(wrapped)}
			cell := &format.Cell{Column: v.Column, RecordID: v.RecordID, Key: wrapped}
			if len(f.Needs()) > 0 {
				v.Row = map[string]string{"tenant": "acme"}
				cell.Fields = []string{"acme"}
			}
			b, err := f.Seal(nil, aead, bytes.NewReader(nonce), pt, cell)
			if err != nil {
				log.Fatalf("%s: seal: %v", v.Name, err)
			}
			v.Cell = hex.EncodeToString(b)
			if f.Text() {
				v.CellText = string(b)
			}
			out = append(out, v)
		}
	}
	return out
}

// rekeyV1Cell is docs/FORMAT.md section 2, "Cell envelope (version 1)".
func rekeyV1Cell(key, nonce, pt []byte, column, recordID, dekID string) []byte {
	aad := []byte("rekey.cell.v1\x00")
	for _, f := range []string{column, recordID, dekID} {
		aad = binary.BigEndian.AppendUint32(aad, uint32(len(f)))
		aad = append(aad, f...)
	}
	return append(append([]byte{0x01}, nonce...), gcm(key).Seal(nil, nonce, pt, aad)...)
}

func gcm(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		log.Fatal(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		log.Fatal(err)
	}
	return g
}

func wrapVectors(rng io.Reader) (wrapFile, []byte) {
	checkKWP()
	kek := random(rng, 32)
	wf := wrapFile{
		Comment: "Wrapped DEKs of the pkcs11 scheme's wrap mechanisms (docs/FORMAT.md section 1, Wrap mechanisms), made by testdata/vectors/gen.go. Test keys only.",
		AESKEK:  hex.EncodeToString(kek),
		RSAKEK:  "rsa-kek.pem",
	}
	add := func(v wrapVector) { wf.Vectors = append(wf.Vectors, v) }

	// aes-gcm: nonce ‖ ciphertext ‖ tag, AAD from the binding.
	for _, tc := range []struct {
		name string
		n    int
		b    binding
	}{
		{"dek_id", 32, binding{DEKID: "dek-0000001"}},
		{"dek_id AES-128 secret", 16, binding{DEKID: "tenant-ü@run-7"}},
		{"dek_id 64-byte secret", 64, binding{DEKID: strings.Repeat("x", 64)}},
		{"unbound", 32, binding{}},
		{"context", 32, binding{Context: map[string]string{"tenant": "acme", "app": "crm"}}},
		{"dek_id and context", 32, binding{DEKID: "k-9", Context: map[string]string{"tenant": "acme"}}},
		{"aad list", 24, binding{AAD: []string{"first", "", "third"}}},
	} {
		dek, nonce := random(rng, tc.n), random(rng, 12)
		aad := gcmAAD(tc.b)
		v := wrapVector{Name: "aes-gcm " + tc.name, Mechanism: schemas.WrapAESGCM, KEK: "aes", DEK: hex.EncodeToString(dek),
			AAD: hex.EncodeToString(aad), Nonce: hex.EncodeToString(nonce),
			Wrapped: hex.EncodeToString(gcm(kek).Seal(bytes.Clone(nonce), nonce, dek, aad))}
		if b := tc.b; b.DEKID != "" || len(b.Context) > 0 || len(b.AAD) > 0 {
			v.Binding = &b
		}
		add(v)
	}

	// aes-kwp: RFC 5649, deterministic.
	for _, n := range []int{32, 16, 24} {
		dek := random(rng, n)
		add(wrapVector{Name: fmt.Sprintf("aes-kwp %d-byte DEK", n), Mechanism: schemas.WrapAESKWP, KEK: "aes",
			DEK: hex.EncodeToString(dek), Wrapped: hex.EncodeToString(kwpWrap(kek, dek))})
	}

	// rsa-oaep-*: RFC 8017 RSAES-OAEP with a fixed seed, empty label.
	priv := rsaKey(rng)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		log.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	for _, tc := range []struct {
		mech string
		h    func() hash.Hash
	}{{schemas.WrapRSAOAEPSHA1, sha1.New}, {schemas.WrapRSAOAEPSHA256, sha256.New}} {
		for _, n := range []int{32, 16} {
			dek, seed := random(rng, n), random(rng, tc.h().Size())
			ct := oaepEncrypt(&priv.PublicKey, tc.h, seed, dek)
			if pt, err := rsa.DecryptOAEP(tc.h(), nil, priv, ct, nil); err != nil || !bytes.Equal(pt, dek) {
				log.Fatalf("%s: crypto/rsa does not decrypt the vector: %v", tc.mech, err)
			}
			add(wrapVector{Name: fmt.Sprintf("%s %d-byte DEK", tc.mech, n), Mechanism: tc.mech, KEK: "rsa",
				DEK: hex.EncodeToString(dek), Seed: hex.EncodeToString(seed), Wrapped: hex.EncodeToString(ct)})
		}
	}
	// rsa-pkcs1: RFC 8017 RSAES-PKCS1-v1_5 (OSS client-side encryption's
	// wrap), padding from its own seed so every earlier vector stays as it was.
	prng := mrand.NewChaCha8([32]byte{'r', 'e', 'k', 'e', 'y', ' ', 'p', 'k', 'c', 's', '1'})
	for _, n := range []int{32, 16} {
		dek := random(prng, n)
		ct := pkcs1Encrypt(&priv.PublicKey, prng, dek)
		if pt, err := rsa.DecryptPKCS1v15(nil, priv, ct); err != nil || !bytes.Equal(pt, dek) {
			log.Fatalf("rsa-pkcs1: crypto/rsa does not decrypt the vector: %v", err)
		}
		add(wrapVector{Name: fmt.Sprintf("rsa-pkcs1 %d-byte secret", n), Mechanism: schemas.WrapRSAPKCS1, KEK: "rsa",
			DEK: hex.EncodeToString(dek), Wrapped: hex.EncodeToString(ct)})
	}
	return wf, pemBytes
}

// pkcs1Encrypt is RFC 8017 section 7.2.1: EM = 0x00 ‖ 0x02 ‖ PS (nonzero
// bytes from rng) ‖ 0x00 ‖ msg, then m^e mod n.
func pkcs1Encrypt(pub *rsa.PublicKey, rng io.Reader, msg []byte) []byte {
	k := (pub.N.BitLen() + 7) / 8
	em := make([]byte, k)
	em[1] = 2
	ps := em[2 : k-len(msg)-1]
	for i := range ps {
		for ps[i] == 0 {
			var b [1]byte
			_, _ = rng.Read(b[:])
			ps[i] = b[0]
		}
	}
	copy(em[k-len(msg):], msg)
	c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
	return c.FillBytes(make([]byte, k))
}

// gcmAAD is the additional data of an aes-gcm wrap: "rekey.dek.v1" ‖ 0x00 ‖
// dek_id for a dek_id alone (docs/FORMAT.md), none for no binding, and
// schemas.BindingAAD for a context or AAD list.
func gcmAAD(b binding) []byte {
	if len(b.Context) == 0 && len(b.AAD) == 0 {
		if b.DEKID == "" {
			return nil
		}
		return []byte("rekey.dek.v1\x00" + b.DEKID)
	}
	return schemas.BindingAAD(b.DEKID, b.Context, b.AAD)
}

// kwpWrap is RFC 5649 section 4.1: AES key wrap with padding.
func kwpWrap(kek, key []byte) []byte {
	block, err := aes.NewCipher(kek)
	if err != nil {
		log.Fatal(err)
	}
	// Alternative initial value: A65959A6 ‖ 32-bit message length.
	var aiv [8]byte
	copy(aiv[:], []byte{0xA6, 0x59, 0x59, 0xA6})
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(key)))
	p := append(bytes.Clone(key), make([]byte, (8-len(key)%8)%8)...)
	n := len(p) / 8
	if n == 1 {
		out := make([]byte, 16)
		block.Encrypt(out, append(aiv[:], p...))
		return out
	}
	// RFC 3394 section 2.2.1 with the AIV.
	a := aiv
	r := make([][8]byte, n)
	for i := range r {
		copy(r[i][:], p[8*i:])
	}
	var buf [16]byte
	for j := 0; j <= 5; j++ {
		for i := 0; i < n; i++ {
			copy(buf[:8], a[:])
			copy(buf[8:], r[i][:])
			block.Encrypt(buf[:], buf[:])
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(buf[:8])^t)
			copy(r[i][:], buf[8:])
		}
	}
	out := append([]byte{}, a[:]...)
	for i := range r {
		out = append(out, r[i][:]...)
	}
	return out
}

// checkKWP checks kwpWrap against the examples of RFC 5649 section 6.
func checkKWP() {
	kek := unhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	for _, tc := range []struct{ key, want string }{
		{"c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	} {
		if got := hex.EncodeToString(kwpWrap(kek, unhex(tc.key))); got != tc.want {
			log.Fatalf("RFC 5649 example %s: got %s, want %s", tc.key, got, tc.want)
		}
	}
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

// rsaKey makes an RSA-2048 key from primes found deterministically in rng
// (crypto/rsa.GenerateKey ignores its reader since Go 1.26).
func rsaKey(rng io.Reader) *rsa.PrivateKey {
	e := big.NewInt(65537)
	one := big.NewInt(1)
	prime := func() *big.Int {
		for {
			b := random(rng, 128)
			b[0] |= 0xC0 // the top two bits: p·q has 2048 bits
			b[127] |= 1
			p := new(big.Int).SetBytes(b)
			for !p.ProbablyPrime(40) {
				p.Add(p, big.NewInt(2))
			}
			pm1 := new(big.Int).Sub(p, one)
			if p.BitLen() == 1024 && new(big.Int).GCD(nil, nil, e, pm1).Cmp(one) == 0 {
				return p
			}
		}
	}
	p, q := prime(), prime()
	if p.Cmp(q) < 0 {
		p, q = q, p
	}
	pm1, qm1 := new(big.Int).Sub(p, one), new(big.Int).Sub(q, one)
	g := new(big.Int).GCD(nil, nil, pm1, qm1)
	lcm := new(big.Int).Div(new(big.Int).Mul(pm1, qm1), g)
	priv := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: new(big.Int).Mul(p, q), E: 65537},
		D:         new(big.Int).ModInverse(e, lcm),
		Primes:    []*big.Int{p, q},
	}
	if priv.N.BitLen() != 2048 {
		log.Fatalf("modulus has %d bits", priv.N.BitLen())
	}
	priv.Precompute()
	if err := priv.Validate(); err != nil {
		log.Fatal(err)
	}
	return priv
}

// oaepEncrypt is RFC 8017 section 7.1.1, RSAES-OAEP-ENCRYPT, with an empty
// label and MGF1 over the same hash.
func oaepEncrypt(pub *rsa.PublicKey, newHash func() hash.Hash, seed, msg []byte) []byte {
	k := (pub.N.BitLen() + 7) / 8
	h := newHash()
	hLen := h.Size()
	if len(msg) > k-2*hLen-2 || len(seed) != hLen {
		log.Fatal("OAEP: message too long or bad seed")
	}
	lHash := h.Sum(nil) // hash of the empty label
	db := make([]byte, 0, k-hLen-1)
	db = append(db, lHash...)
	db = append(db, make([]byte, k-len(msg)-2*hLen-2)...)
	db = append(db, 0x01)
	db = append(db, msg...)
	xor(db, mgf1(newHash, seed, len(db)))
	maskedSeed := bytes.Clone(seed)
	xor(maskedSeed, mgf1(newHash, db, hLen))
	em := append(append([]byte{0x00}, maskedSeed...), db...)
	c := new(big.Int).Exp(new(big.Int).SetBytes(em), big.NewInt(int64(pub.E)), pub.N)
	return c.FillBytes(make([]byte, k))
}

func mgf1(newHash func() hash.Hash, seed []byte, n int) []byte {
	var out []byte
	for counter := uint32(0); len(out) < n; counter++ {
		h := newHash()
		h.Write(seed)
		h.Write(binary.BigEndian.AppendUint32(nil, counter))
		out = h.Sum(out)
	}
	return out[:n]
}

func xor(dst, mask []byte) {
	for i := range dst {
		dst[i] ^= mask[i]
	}
}
