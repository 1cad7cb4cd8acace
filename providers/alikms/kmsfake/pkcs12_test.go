package kmsfake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"testing"

	"golang.org/x/crypto/pkcs12"
)

// TestPKCS12 reads encodePKCS12's archive back the way the instance SDK
// does: certificate first, then the key.
func TestPKCS12(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p12, err := encodePKCS12(key, der, "pässword")
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := pkcs12.ToPEM(p12, "pässword")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || blocks[0].Type != "CERTIFICATE" || string(blocks[0].Bytes) != string(der) {
		t.Fatalf("blocks: %d, first %q", len(blocks), blocks[0].Type)
	}
	got, err := x509.ParsePKCS1PrivateKey(blocks[1].Bytes)
	if err != nil || !got.Equal(key) {
		t.Fatalf("the key does not come back: %v", err)
	}
	if _, err := pkcs12.ToPEM(p12, "password"); err == nil {
		t.Error("the archive opens with another password")
	}
}
