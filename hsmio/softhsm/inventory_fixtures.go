package softhsm

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/miekg/pkcs11"
)

// ObjectSpec describes a test object for the key inventory tests: secret
// keys of several types, RSA and EC key pairs, certificates.
type ObjectSpec struct {
	Label string
	// Kind is "aes", "generic" (generic secret), "rsa", "ec" (P-256) or
	// "cert" (CertDER stored as a certificate object).
	Kind        string
	Bits        int // aes, generic: key length; rsa: modulus (default 2048)
	Extractable bool
	// Sign lets the key sign (HMAC/CMAC for secret keys); Encrypt lets a
	// secret key encrypt and decrypt, a private key decrypt.
	Sign, Encrypt bool
	// Wrap lets a secret key wrap and unwrap (SoftHSM's default when the
	// template does not say; here it is off unless asked for).
	Wrap bool
	// Value imports a secret key with this value instead of generating one,
	// so a test can compute its check value independently.
	Value   []byte
	CertDER []byte
	ID      []byte // default: the label's bytes
}

// withToken runs f on a logged-in session of the token, initializing the
// library only if nobody in this process has (then finalizing it again, so
// crypto11 can be the first to initialize later).
func withToken(tokenLabel, pin string, f func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error) error {
	p := pkcs11.New(Module)
	if p == nil {
		return fmt.Errorf("%w: cannot load %s", ErrMissing, Module)
	}
	switch err := p.Initialize(); {
	case err == nil:
		defer func() { _ = p.Finalize(); p.Destroy() }()
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
	default:
		return err
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return err
	}
	slot, found := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && strings.TrimSpace(ti.Label) == tokenLabel {
			slot, found = s, true
		}
	}
	if !found {
		return fmt.Errorf("token %q not found (was it created in this process's SOFTHSM2_CONF?)", tokenLabel)
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	defer func() { _ = p.CloseSession(sh) }()
	if err := p.Login(sh, pkcs11.CKU_USER, pin); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		return fmt.Errorf("log in to %q: %w", tokenLabel, err)
	}
	return f(p, sh)
}

func findOne(p *pkcs11.Ctx, sh pkcs11.SessionHandle, class uint, label string) (pkcs11.ObjectHandle, bool, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}
	if class != ^uint(0) {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class))
	}
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		return 0, false, err
	}
	objs, _, err := p.FindObjects(sh, 1)
	_ = p.FindObjectsFinal(sh)
	if err != nil || len(objs) == 0 {
		return 0, false, err
	}
	return objs[0], true, nil
}

// CreateObjects makes the objects on the token, skipping labels that exist.
func CreateObjects(tokenLabel, pin string, specs []ObjectSpec) error {
	return withToken(tokenLabel, pin, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		for _, s := range specs {
			if _, ok, err := findOne(p, sh, ^uint(0), s.Label); err != nil {
				return err
			} else if ok {
				continue
			}
			if err := createObject(p, sh, s); err != nil {
				return fmt.Errorf("create %s %q on %q: %w", s.Kind, s.Label, tokenLabel, err)
			}
		}
		return nil
	})
}

func createObject(p *pkcs11.Ctx, sh pkcs11.SessionHandle, s ObjectSpec) error {
	id := s.ID
	if id == nil {
		id = []byte(s.Label)
	}
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.Label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}
	}
	switch s.Kind {
	case "aes", "generic":
		kt, gen := uint(pkcs11.CKK_AES), uint(pkcs11.CKM_AES_KEY_GEN)
		if s.Kind == "generic" {
			kt, gen = pkcs11.CKK_GENERIC_SECRET, pkcs11.CKM_GENERIC_SECRET_KEY_GEN
		}
		bits := s.Bits
		if bits == 0 {
			bits = 256
		}
		t := append(common(pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, s.Extractable),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, s.Encrypt),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, s.Encrypt),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, s.Sign),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, s.Sign),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, s.Wrap),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, s.Wrap),
		)
		if s.Value != nil {
			_, err := p.CreateObject(sh, append(t, pkcs11.NewAttribute(pkcs11.CKA_VALUE, s.Value)))
			return err
		}
		_, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(gen, nil)}, append(t, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, bits/8)))
		return err
	case "rsa", "ec":
		pub := append(common(pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, s.Sign),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, s.Encrypt && s.Kind == "rsa"),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false))
		priv := append(common(pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, s.Extractable),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, s.Sign),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, s.Encrypt && s.Kind == "rsa"),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false))
		mech := uint(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN)
		if s.Kind == "rsa" {
			bits := s.Bits
			if bits == 0 {
				bits = 2048
			}
			pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, bits), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
			priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA))
		} else {
			mech = pkcs11.CKM_EC_KEY_PAIR_GEN
			p256, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
			pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256))
			priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC))
		}
		_, _, err := p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
		return err
	case "cert":
		c, err := x509.ParseCertificate(s.CertDER)
		if err != nil {
			return err
		}
		_, err = p.CreateObject(sh, append(common(pkcs11.CKO_CERTIFICATE),
			pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
			pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, c.RawSubject),
			pkcs11.NewAttribute(pkcs11.CKA_ISSUER, c.RawIssuer),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, s.CertDER)))
		return err
	}
	return fmt.Errorf("unknown kind %q", s.Kind)
}

// Sign signs msg with the private key labelled label: RSA PKCS#1 v1.5 with
// SHA-256, or ECDSA over SHA-256 with the signature DER-encoded, the forms
// `openssl dgst -sha256 -verify` checks.
func Sign(tokenLabel, pin, label string, msg []byte) ([]byte, error) {
	var sig []byte
	err := withToken(tokenLabel, pin, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, ok, err := findOne(p, sh, pkcs11.CKO_PRIVATE_KEY, label)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("no private key %q on %q", label, tokenLabel)
		}
		kt, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
		if err != nil {
			return err
		}
		if kt[0].Value[0] == byte(pkcs11.CKK_RSA) {
			if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS, nil)}, h); err != nil {
				return err
			}
			sig, err = p.Sign(sh, msg)
			return err
		}
		d := sha256.Sum256(msg)
		if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, h); err != nil {
			return err
		}
		raw, err := p.Sign(sh, d[:])
		if err != nil {
			return err
		}
		n := len(raw) / 2
		sig, err = asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
		return err
	})
	return sig, err
}

// ValueReadable reports whether the CKA_VALUE of the secret or private key
// labelled label can be read off the token. It never returns the value: it
// exists to show that keys rekey created are sensitive.
func ValueReadable(tokenLabel, pin, label string, class uint) (bool, error) {
	readable := false
	err := withToken(tokenLabel, pin, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, ok, err := findOne(p, sh, class, label)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("no object %q of class %d on %q", label, class, tokenLabel)
		}
		a, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID)) {
			// RSA private keys hold their secret in CKA_PRIVATE_EXPONENT.
			a, err = p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_PRIVATE_EXPONENT, nil)})
		}
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
			return nil
		}
		if err != nil {
			return err
		}
		readable = len(a) > 0 && a[0].Value != nil
		clear(a[0].Value)
		return nil
	})
	return readable, err
}
