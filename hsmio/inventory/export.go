package inventory

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
)

// PublicExport is the exported public key of one inventory entry.
type PublicExport struct {
	Key         KeyEntry
	Algorithm   string // "RSA-2048", "EC P-256", "Ed25519"
	Fingerprint string // sha256 of the DER SubjectPublicKeyInfo
	KeyID       string // RFC 7638 JWK thumbprint, the JWK's kid
	PEM         []byte // PUBLIC KEY (or CERTIFICATE) block after descriptive lines
	JWK         []byte // JSON
	Err         error
}

// WantsExport reports whether export-public writes the entry: signing key
// pairs (whatever their disposition), lone public keys and certificates.
func WantsExport(e *KeyEntry) bool {
	switch e.Kind {
	case KindCertificate, KindPublic:
		return true
	case KindKeyPair, KindPrivate:
		return e.Signing()
	}
	return false
}

// ExportPublic reads the public keys of the entries WantsExport picks and
// encodes them as PEM and JWK, each labelled with the key's label, id,
// algorithm and fingerprint. Errors are per entry.
func (k *KeyToken) ExportPublic(_ context.Context, inv []KeyEntry) []PublicExport {
	var out []PublicExport
	for i := range inv {
		e := inv[i]
		if !WantsExport(&e) {
			continue
		}
		x := PublicExport{Key: e}
		x.Err = k.export1(&x)
		if x.Err != nil {
			x.Err = fmt.Errorf("export public key of %q (id %s) from token %q: %w", e.Label, e.ID, k.Label(), x.Err)
		}
		out = append(out, x)
	}
	return out
}

func (k *KeyToken) export1(x *PublicExport) error {
	e := &x.Key
	var pub crypto.PublicKey
	var certDER []byte
	if e.Kind == KindCertificate {
		c, err := k.certificate(e)
		if err != nil {
			return err
		}
		pub, certDER = c.PublicKey, c.Raw
	} else {
		var err error
		if pub, err = k.publicKey(e); err != nil {
			return err
		}
	}
	fp, err := Fingerprint(pub)
	if err != nil {
		return err
	}
	x.Fingerprint = fp
	x.Algorithm = Algorithm(pub)
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	head := fmt.Sprintf("Label: %s\nID: %s\nAlgorithm: %s\nFingerprint: %s\nSource: %s\n", oneLine(e.Label), e.ID, x.Algorithm, fp, e.URI)
	block := &pem.Block{Type: "PUBLIC KEY", Bytes: der}
	if certDER != nil {
		block = &pem.Block{Type: "CERTIFICATE", Bytes: certDER}
	}
	x.PEM = append([]byte(head), pem.EncodeToMemory(block)...)
	jwk, kid, err := JWK(pub)
	if err != nil {
		return err
	}
	x.KeyID = kid
	jwk["label"] = e.Label
	jwk["id"] = e.ID
	jwk["algorithm"] = x.Algorithm
	jwk["fingerprint"] = fp
	jwk["source"] = e.URI
	if certDER != nil {
		jwk["x5c"] = []string{base64.StdEncoding.EncodeToString(certDER)}
	}
	if x.JWK, err = json.MarshalIndent(jwk, "", "  "); err != nil {
		return err
	}
	x.JWK = append(x.JWK, '\n')
	return nil
}

func oneLine(s string) string { return strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(s) }

// Algorithm names a public key: "RSA-2048", "EC P-256", "Ed25519".
func Algorithm(pub crypto.PublicKey) string {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", p.N.BitLen())
	case *ecdsa.PublicKey:
		return "EC " + p.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// JWK encodes a public key as a JSON Web Key (RFC 7517) with use "sig" and
// kid set to its RFC 7638 thumbprint, which it also returns.
func JWK(pub crypto.PublicKey) (map[string]any, string, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	var req map[string]string // the RFC 7638 required members
	jwk := map[string]any{"use": "sig", "key_ops": []string{"verify"}}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		req = map[string]string{"kty": "RSA", "n": b64(p.N.Bytes()), "e": b64(big.NewInt(int64(p.E)).Bytes())}
	case *ecdsa.PublicKey:
		raw, err := p.Bytes()
		if err != nil {
			return nil, "", err
		}
		n := (len(raw) - 1) / 2
		name := p.Curve.Params().Name
		req = map[string]string{"kty": "EC", "crv": name, "x": b64(raw[1 : 1+n]), "y": b64(raw[1+n:])}
		if alg, ok := map[string]string{"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[name]; ok {
			jwk["alg"] = alg
		}
	case ed25519.PublicKey:
		req = map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(p)}
		jwk["alg"] = "EdDSA"
	default:
		return nil, "", fmt.Errorf("no JWK form for %T", pub)
	}
	// encoding/json sorts map keys, which is the order RFC 7638 wants.
	canon, err := json.Marshal(req)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(canon)
	kid := b64(sum[:])
	for k, v := range req {
		jwk[k] = v
	}
	jwk["kid"] = kid
	return jwk, kid, nil
}

// Successor is the new key pair made on the target for a signing key pair
// that cannot move.
type Successor struct {
	Label       string `json:"label"`
	ID          string `json:"id"` // hex
	URI         string `json:"uri"`
	Fingerprint string `json:"fingerprint"`
	Created     bool   `json:"created"` // false: it was already there (rerun)
}

// CreateSuccessor generates on dst a key pair of the same type and size as
// e, labelled e.Label+suffix with id e's id followed by the suffix's bytes:
// sensitive, not extractable, allowed to sign (and whatever else e's private
// key may do). If dst already has a private key with that label, it is
// reported (Created false) and left alone.
func CreateSuccessor(_ context.Context, e KeyEntry, dst *KeyToken, suffix string) (Successor, error) {
	label := e.Label + suffix
	id := append(e.RawID(), []byte(suffix)...)
	s := Successor{Label: label, ID: fmt.Sprintf("%x", id), URI: dst.keyURI(label, id, "private")}
	what := fmt.Sprintf("successor %q of key pair %q on token %q", label, e.Label, dst.Label())
	if suffix == "" {
		return s, fmt.Errorf("%s: empty label suffix (give --create-successor SUFFIX, e.g. -2026)", what)
	}
	if e.Kind != KindKeyPair && e.Kind != KindPrivate {
		return s, fmt.Errorf("%s: %s is not a key pair", what, e.Kind)
	}
	if hs, err := dst.find(pkcs11.CKO_PRIVATE_KEY, label, nil, true); err != nil {
		return s, fmt.Errorf("%s: %w", what, err)
	} else if len(hs) > 0 {
		pubs, err := dst.find(pkcs11.CKO_PUBLIC_KEY, label, nil, true)
		if err != nil {
			return s, fmt.Errorf("%s: %w", what, err)
		}
		if len(pubs) == 1 {
			pe, err := dst.describe(pubs[0], pkcs11.CKO_PUBLIC_KEY)
			if err == nil {
				if pub, err := dst.publicKey(&pe); err == nil {
					s.Fingerprint, _ = Fingerprint(pub)
				}
			}
		}
		return s, nil
	}
	var mech uint
	pubT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, e.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, e.usage[pkcs11.CKA_DECRYPT]),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, e.usage[pkcs11.CKA_UNWRAP]),
	}
	switch e.keyType {
	case pkcs11.CKK_RSA:
		mech = pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
		bits := e.Bits
		if bits < 2048 {
			bits = 2048
		}
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
	case pkcs11.CKK_EC, 0x40:
		mech = pkcs11.CKM_EC_KEY_PAIR_GEN
		if e.keyType == 0x40 {
			mech = 0x1055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
		}
		if len(e.ecParams) == 0 {
			return s, fmt.Errorf("%s: the source key shows no CKA_EC_PARAMS", what)
		}
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, e.ecParams))
	default:
		return s, fmt.Errorf("%s: key type %s: make the successor with the HSM's own tools", what, e.Type)
	}
	privT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, e.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, e.usage[pkcs11.CKA_DECRYPT]),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, e.usage[pkcs11.CKA_UNWRAP]),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, e.usage[pkcs11.CKA_DERIVE]),
	}
	sh, err := dst.session()
	if err != nil {
		return s, fmt.Errorf("%s: %w", what, err)
	}
	ph, _, err := dst.api.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pubT, privT)
	if err != nil {
		return s, hsmio.Classify(err, "generate "+what)
	}
	s.Created = true
	pe, err := dst.describe(ph, pkcs11.CKO_PUBLIC_KEY)
	if err != nil {
		return s, err
	}
	pub, err := dst.publicKey(&pe)
	if err != nil {
		return s, fmt.Errorf("%s: created, but its public key is not readable: %w", what, err)
	}
	s.Fingerprint, err = Fingerprint(pub)
	return s, err
}
