package kmsfake

import (
	"crypto/cipher"
	"crypto/des" //nolint:gosec // PKCS#12's pbeWithSHAAnd3-KeyTripleDES-CBC, what the SDK's decoder reads
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // PKCS#12 key derivation and MAC
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"unicode/utf16"
)

// A ClientKey file holds a PKCS#12 archive: a certificate bag first, then
// a shrouded key bag, as the instance SDK reads them (it takes the first
// PEM block for the certificate, the second for the key). encodePKCS12
// writes the RFC 7292 subset golang.org/x/crypto/pkcs12 decodes: two
// unencrypted "data" safes, the key under pbeWithSHAAnd3-KeyTripleDES-CBC,
// an HMAC-SHA1 MAC.

var (
	oidData           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidCertBag        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 10, 1, 3}
	oidShroudedKeyBag = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 10, 1, 2}
	oidX509Cert       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 22, 1}
	oidPBE3DES        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 1, 3}
	oidSHA1           = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
)

type p12ContentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue
}

type p12SafeBag struct {
	ID    asn1.ObjectIdentifier
	Value asn1.RawValue
}

type p12CertBag struct {
	ID   asn1.ObjectIdentifier
	Data asn1.RawValue
}

type p12PBEParams struct {
	Salt       []byte
	Iterations int
}

type p12EncryptedKey struct {
	Algorithm pkix.AlgorithmIdentifier
	Data      []byte
}

type p12DigestInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	Digest    []byte
}

type p12MacData struct {
	Mac        p12DigestInfo
	Salt       []byte
	Iterations int
}

type p12PFX struct {
	Version  int
	AuthSafe p12ContentInfo
	MacData  p12MacData
}

const p12Iterations = 2048

// explicit0 wraps DER in an [0] EXPLICIT tag.
func explicit0(der []byte) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: der}
}

func dataInfo(content []byte) (p12ContentInfo, error) {
	octets, err := asn1.Marshal(content)
	return p12ContentInfo{ContentType: oidData, Content: explicit0(octets)}, err
}

func encodePKCS12(key *rsa.PrivateKey, certDER []byte, password string) ([]byte, error) {
	pw := bmpString(password)
	octets, err := asn1.Marshal(certDER)
	if err != nil {
		return nil, err
	}
	cb, err := asn1.Marshal(p12CertBag{ID: oidX509Cert, Data: explicit0(octets)})
	if err != nil {
		return nil, err
	}
	certSafe, err := asn1.Marshal([]p12SafeBag{{ID: oidCertBag, Value: explicit0(cb)}})
	if err != nil {
		return nil, err
	}

	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	salt := random(8)
	block, err := des.NewTripleDESCipher(pbkdf(1, salt, pw, 24)) //nolint:gosec
	if err != nil {
		return nil, err
	}
	pad := 8 - len(pkcs8)%8
	enc := append(pkcs8, make([]byte, pad)...)
	for i := len(pkcs8); i < len(enc); i++ {
		enc[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(block, pbkdf(2, salt, pw, 8)).CryptBlocks(enc, enc)
	params, err := asn1.Marshal(p12PBEParams{Salt: salt, Iterations: p12Iterations})
	if err != nil {
		return nil, err
	}
	kb, err := asn1.Marshal(p12EncryptedKey{Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidPBE3DES, Parameters: asn1.RawValue{FullBytes: params}}, Data: enc})
	if err != nil {
		return nil, err
	}
	keySafe, err := asn1.Marshal([]p12SafeBag{{ID: oidShroudedKeyBag, Value: explicit0(kb)}})
	if err != nil {
		return nil, err
	}

	c1, err := dataInfo(certSafe)
	if err != nil {
		return nil, err
	}
	c2, err := dataInfo(keySafe)
	if err != nil {
		return nil, err
	}
	authSafe, err := asn1.Marshal([]p12ContentInfo{c1, c2})
	if err != nil {
		return nil, err
	}
	macSalt := random(8)
	mac := hmac.New(sha1.New, pbkdf(3, macSalt, pw, 20))
	mac.Write(authSafe)
	outer, err := dataInfo(authSafe)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(p12PFX{Version: 3, AuthSafe: outer, MacData: p12MacData{
		Mac:  p12DigestInfo{Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA1, Parameters: asn1.NullRawValue}, Digest: mac.Sum(nil)},
		Salt: macSalt, Iterations: p12Iterations,
	}})
}

// bmpString is a PKCS#12 password: UTF-16BE with a terminating zero.
func bmpString(s string) []byte {
	var b []byte
	for _, r := range utf16.Encode([]rune(s)) {
		b = append(b, byte(r>>8), byte(r))
	}
	return append(b, 0, 0)
}

// pbkdf is PKCS#12's key derivation (RFC 7292 appendix B.2) with SHA-1:
// n bytes for purpose id (1 key, 2 IV, 3 MAC key).
func pbkdf(id byte, salt, password []byte, n int) []byte {
	const v = 64 // SHA-1's block size
	fill := func(s []byte) []byte {
		if len(s) == 0 {
			return nil
		}
		out := make([]byte, v*((len(s)+v-1)/v))
		for i := range out {
			out[i] = s[i%len(s)]
		}
		return out
	}
	D := make([]byte, v)
	for i := range D {
		D[i] = id
	}
	I := append(fill(salt), fill(password)...)
	var out []byte
	for len(out) < n {
		h := sha1.New() //nolint:gosec
		h.Write(D)
		h.Write(I)
		A := h.Sum(nil)
		for r := 1; r < p12Iterations; r++ {
			s := sha1.Sum(A) //nolint:gosec
			A = s[:]
		}
		out = append(out, A...)
		B := fill(A)
		for j := 0; j < len(I); j += v {
			carry := 1
			for k := v - 1; k >= 0; k-- {
				x := int(I[j+k]) + int(B[k]) + carry
				I[j+k], carry = byte(x), x>>8
			}
		}
	}
	return out[:n]
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
