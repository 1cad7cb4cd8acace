package hsmio

import (
	"bytes"
	"context"
	"crypto"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // OAEP-SHA1 is what SoftHSM offers; it is not used for signatures.
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"rekey/providers/keys"
	"rekey/schemas"
)

func init() {
	keys.Register(keys.Scheme{
		Name: "pkcs11",
		Open: func(ctx context.Context, uri string, opts keys.Options) (keys.KEK, error) {
			k, err := Open(ctx, uri, opts)
			if err != nil {
				return nil, err // not a typed nil inside a non-nil interface
			}
			return k, nil
		},
		Parse:      parseRef,
		Same:       SameKey,
		Mechanisms: schemas.WrapMechanisms,
		Example:    "pkcs11:token=<label>;object=<key label>?pin-source=env:VAR",
		Import:     "rekey/hsmio",
	})
}

// parseRef is the pkcs11 scheme's reference parser: the canonical form
// names token and key only; the custodian is the token on its module.
func parseRef(uri string) (keys.Ref, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return keys.Ref{}, err
	}
	return keys.Ref{Scheme: "pkcs11", Canonical: u.KeyURI(), Redacted: u.KeyURI(), Custodian: u.custodian()}, nil
}

func (u URI) custodian() string { return "pkcs11|" + u.ModulePath + "|" + u.Token + "|" + u.Serial }

// gcmAAD is what an AES-GCM wrap binds: rekey's dek_id label for its own
// tables (byte for byte what rekey-v1 tables hold), nothing for an unbound
// key, and a length-prefixed encoding of a context or AAD list otherwise.
func gcmAAD(b keys.Binding) []byte {
	if len(b.Context) == 0 && len(b.AAD) == 0 {
		if b.DEKID == "" {
			return nil
		}
		return schemas.DEKAAD(b.DEKID)
	}
	return schemas.BindingAAD(b.DEKID, b.Context, b.AAD)
}

// KEK is a key-encryption key on a PKCS#11 token.
type KEK struct {
	uri   URI
	tok   *token
	mech  string
	isRSA bool

	aes     *crypto11.SecretKey
	gcm     cipher.AEAD
	rsaPriv crypto11.SignerDecrypter // nil if only the public key is present
	rsaPub  *rsa.PublicKey
	handle  atomic.Uint64 // AES KEK object handle for C_WrapKey/C_UnwrapKey, once found
	keyURI  string        // URI(), computed once: it keys the DEK cache on every lookup
	// noRewrap is set once the token has shown it cannot rewrap inside
	// (see rewrap.go); rewraps then go through rekey.
	noRewrap atomic.Bool
}

var _ keys.KEK = (*KEK)(nil)
var _ keys.Generator = (*KEK)(nil)
var _ keys.Preflighter = (*KEK)(nil)

// Open logs in to the token named by uri and finds the key.
func Open(_ context.Context, uri string, opts keys.Options) (*KEK, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	tok, err := openToken(u, opts.Sessions)
	if err != nil {
		return nil, err
	}
	k := &KEK{uri: u, tok: tok, keyURI: u.KeyURI()}
	ref := fmt.Sprintf("%s", u.KeyURI())
	var id []byte
	if len(u.ID) > 0 {
		id = u.ID
	}
	var label []byte
	if u.Object != "" {
		label = []byte(u.Object)
	}
	if u.Type == "" || u.Type == "secret-key" {
		sk, err := tok.c11.FindKey(id, label)
		if err != nil && strings.Contains(err.Error(), "not found") {
			sk, err = nil, nil
		}
		if err != nil {
			return nil, classify(err, "find key "+ref)
		}
		if sk != nil {
			k.aes = sk
		}
	}
	if k.aes == nil && u.Type != "secret-key" {
		kp, err := tok.c11.FindKeyPair(id, label)
		if err != nil && strings.Contains(err.Error(), "not found") {
			kp, err = nil, nil
		}
		if err != nil {
			return nil, classify(err, "find key pair "+ref)
		}
		if kp != nil {
			pub, ok := kp.Public().(*rsa.PublicKey)
			if !ok {
				return nil, fmt.Errorf("key %s: %w: it is a %T key pair; rekey wraps DEKs with AES or RSA keys", ref, keys.ErrMechanism, kp.Public())
			}
			k.isRSA, k.rsaPub = true, pub
			if sd, ok := kp.(crypto11.SignerDecrypter); ok {
				k.rsaPriv = sd
			}
		}
	}
	if k.aes == nil && !k.isRSA {
		return nil, fmt.Errorf("key %s on token %q: %w (check object= in the URI; list keys with: pkcs11-tool --module %s --token-label %q --login --list-objects)", ref, u.Token, keys.ErrKeyNotFound, u.ModulePath, u.Token)
	}
	k.mech = opts.Wrap
	if k.mech == "" {
		k.mech = schemas.WrapAESGCM
		if k.isRSA {
			k.mech = schemas.WrapRSAOAEPSHA256
		}
	}
	if err := k.checkMech(k.mech); err != nil {
		return nil, err
	}
	if k.aes != nil {
		if k.gcm, err = k.aes.NewGCM(); err != nil {
			return nil, classify(err, "AES-GCM on "+ref)
		}
	}
	return k, nil
}

func (k *KEK) checkMech(m string) error {
	switch m {
	case schemas.WrapAESGCM, schemas.WrapAESKWP:
		if k.aes == nil {
			return fmt.Errorf("key %s: %w: %s needs an AES key, this is an RSA key pair (use rsa-oaep-sha256 or rsa-oaep-sha1)", k.URI(), keys.ErrMechanism, m)
		}
	case schemas.WrapRSAOAEPSHA1, schemas.WrapRSAOAEPSHA256:
		if !k.isRSA {
			return fmt.Errorf("key %s: %w: %s needs an RSA key pair, this is an AES key (use aes-gcm or aes-kwp)", k.URI(), keys.ErrMechanism, m)
		}
	default:
		return fmt.Errorf("key %s: %w: unknown wrap %q (pkcs11 wraps with: %v)", k.URI(), keys.ErrMechanism, m, schemas.WrapMechanisms)
	}
	return nil
}

// URI implements keys.KEK.
func (k *KEK) URI() string { return k.keyURI }

// Mechanism implements keys.KEK.
func (k *KEK) Mechanism() string { return k.mech }

// Wrap implements keys.KEK.
func (k *KEK) Wrap(_ context.Context, b keys.Binding, dek *keys.DEK) (out []byte, err error) {
	what := fmt.Sprintf("wrap DEK (%s) with %s (%s)", b, k.URI(), k.mech)
	switch k.mech {
	case schemas.WrapAESGCM:
		nonce := make([]byte, schemas.NonceSize)
		if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
			return nil, err
		}
		// crypto11's Seal panics on HSM errors; turn that back into an error.
		defer func() {
			if r := recover(); r != nil {
				out = nil
				if e, ok := r.(error); ok {
					err = classify(e, what)
				} else {
					err = fmt.Errorf("%s: %v", what, r)
				}
			}
		}()
		return k.gcm.Seal(nonce, nonce, dek.Bytes(), gcmAAD(b)), nil
	case schemas.WrapAESKWP:
		if dek.Len()%8 != 0 {
			// RFC 5649 pads other lengths, and the padding does not
			// always come off again on unwrap (SoftHSM returns it).
			return nil, fmt.Errorf("%s: %w: aes-kwp wraps secrets whose length is a multiple of 8 bytes; this one is %d (use aes-gcm)", what, keys.ErrMechanism, dek.Len())
		}
		err = k.tok.withSession(func(sh pkcs11.SessionHandle) error {
			kek, err := k.aesHandle(sh)
			if err != nil {
				return err
			}
			obj, err := k.tok.p11.CreateObject(sh, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE, dek.Bytes()),
			})
			if err != nil {
				return err
			}
			defer func() { _ = k.tok.p11.DestroyObject(sh, obj) }()
			out, err = k.tok.p11.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, obj)
			return err
		})
		if err != nil {
			return nil, classify(err, what)
		}
		return out, nil
	case schemas.WrapRSAOAEPSHA256:
		out, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, k.rsaPub, dek.Bytes(), nil)
	case schemas.WrapRSAOAEPSHA1:
		out, err = rsa.EncryptOAEP(sha1.New(), rand.Reader, k.rsaPub, dek.Bytes(), nil) //nolint:gosec
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// Unwrap implements keys.KEK.
func (k *KEK) Unwrap(_ context.Context, b keys.Binding, mech string, wrapped []byte) (*keys.DEK, error) {
	what := fmt.Sprintf("unwrap DEK (%s) with %s (%s)", b, k.URI(), mech)
	if err := k.checkMech(mech); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(wrapped) > schemas.MaxWrappedDEK {
		return nil, fmt.Errorf("%s: %w: wrapped key is %d bytes", what, keys.ErrUnwrapFailed, len(wrapped))
	}
	var plain []byte
	defer func() { clear(plain) }()
	var err error
	switch mech {
	case schemas.WrapAESGCM:
		if n := len(wrapped) - schemas.NonceSize - schemas.TagSize; n < keys.MinSecret || n > keys.MaxSecret {
			return nil, fmt.Errorf("%s: %w: wrapped key is %d bytes, want %d to %d", what, keys.ErrUnwrapFailed, len(wrapped), schemas.NonceSize+keys.MinSecret+schemas.TagSize, schemas.NonceSize+keys.MaxSecret+schemas.TagSize)
		}
		plain, err = k.gcm.Open(nil, wrapped[:schemas.NonceSize], wrapped[schemas.NonceSize:], gcmAAD(b))
	case schemas.WrapAESKWP:
		// RFC 5649: an 8-byte integrity block plus the padded key, in
		// 8-byte blocks.
		if len(wrapped) < 8+keys.MinSecret || len(wrapped)%8 != 0 {
			return nil, fmt.Errorf("%s: %w: an aes-kwp wrapped key is a multiple of 8 bytes and at least %d; this one is %d", what, keys.ErrUnwrapFailed, 8+keys.MinSecret, len(wrapped))
		}
		err = k.tok.withSession(func(sh pkcs11.SessionHandle) error {
			kek, err := k.aesHandle(sh)
			if err != nil {
				return err
			}
			obj, err := k.tok.p11.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, wrapped, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			})
			if err != nil {
				return err
			}
			defer func() { _ = k.tok.p11.DestroyObject(sh, obj) }()
			attrs, err := k.tok.p11.GetAttributeValue(sh, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if err != nil {
				return err
			}
			plain = attrs[0].Value
			return nil
		})
	case schemas.WrapRSAOAEPSHA256, schemas.WrapRSAOAEPSHA1:
		if k.rsaPriv == nil {
			return nil, fmt.Errorf("%s: %w: the token holds only the public key", what, keys.ErrKeyNotFound)
		}
		h := crypto.SHA256
		if mech == schemas.WrapRSAOAEPSHA1 {
			h = crypto.SHA1
		}
		plain, err = k.rsaPriv.Decrypt(nil, wrapped, &rsa.OAEPOptions{Hash: h})
	}
	if err != nil {
		return nil, classify(err, what)
	}
	dek, err := keys.NewDEK(plain)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return dek, nil
}

// aesHandle finds the KEK's object handle once; a token object's handle is
// valid in every session of this process, and the search costs three
// PKCS#11 calls per operation otherwise.
func (k *KEK) aesHandle(sh pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) {
	if h := k.handle.Load(); h != 0 {
		return pkcs11.ObjectHandle(h), nil
	}
	h, ok, err := k.tok.findObject(sh, pkcs11.CKO_SECRET_KEY, k.uri.Object, k.uri.ID)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%w: %s", keys.ErrKeyNotFound, k.URI())
	}
	k.handle.Store(uint64(h))
	return h, nil
}

// GenerateDEK implements keys.Generator with the token's RNG.
func (k *KEK) GenerateDEK(context.Context) (*keys.DEK, error) {
	r, err := k.tok.c11.NewRandomReader()
	if err != nil {
		return nil, classify(err, "HSM random on token "+k.uri.Token)
	}
	b := make([]byte, keys.DEKSize)
	defer clear(b)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, classify(err, "HSM random on token "+k.uri.Token)
	}
	return keys.NewDEK(b)
}

// Preflight implements keys.Preflighter: attributes, then a round trip of a
// throwaway key.
func (k *KEK) Preflight(ctx context.Context, needWrap, needUnwrap bool) []keys.Check {
	var out []keys.Check
	ref := k.URI()
	out = append(out, keys.Check{Name: "key " + ref, OK: true, Info: map[bool]string{true: "RSA key pair", false: "AES key"}[k.isRSA] + ", wrap " + k.mech})
	_ = k.tok.withSession(func(sh pkcs11.SessionHandle) error {
		class := uint(pkcs11.CKO_SECRET_KEY)
		if k.isRSA {
			class = pkcs11.CKO_PRIVATE_KEY
		}
		h, ok, err := k.tok.findObject(sh, class, k.uri.Object, k.uri.ID)
		if err != nil || !ok {
			if k.isRSA && needUnwrap {
				out = append(out, keys.Check{Name: "private key of " + ref, OK: false, Info: "not found: unwrap impossible"})
			}
			return nil
		}
		attrs := []uint{pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_SENSITIVE}
		if !k.isRSA {
			attrs = append(attrs, pkcs11.CKA_ENCRYPT, pkcs11.CKA_WRAP)
		}
		a, err := k.tok.boolAttrs(sh, h, attrs...)
		if err != nil {
			out = append(out, keys.Check{Name: "attributes of " + ref, Warn: true, OK: true, Info: "cannot read: " + err.Error()})
			return nil
		}
		need := func(attr uint, name string, when bool) {
			if when && !a[attr] {
				out = append(out, keys.Check{Name: name + " on " + ref, OK: false, Info: "not set: the key does not permit this operation"})
			}
		}
		switch k.mech {
		case schemas.WrapAESGCM:
			need(pkcs11.CKA_ENCRYPT, "CKA_ENCRYPT", needWrap)
			need(pkcs11.CKA_DECRYPT, "CKA_DECRYPT", needUnwrap)
		case schemas.WrapAESKWP:
			need(pkcs11.CKA_WRAP, "CKA_WRAP", needWrap)
			need(pkcs11.CKA_UNWRAP, "CKA_UNWRAP", needUnwrap)
		default:
			need(pkcs11.CKA_DECRYPT, "CKA_DECRYPT", needUnwrap)
		}
		if a[pkcs11.CKA_EXTRACTABLE] {
			out = append(out, keys.Check{Name: "CKA_EXTRACTABLE on " + ref, OK: true, Warn: true, Info: "the KEK is extractable: a KEK should never leave its HSM; create it with CKA_EXTRACTABLE=false"})
		}
		return nil
	})
	if !needWrap {
		// A source key may allow unwrap only; a round trip would need wrap.
		return out
	}
	test, err := keys.NewDEK(bytes.Repeat([]byte{0x5a}, keys.DEKSize))
	if err != nil {
		return append(out, keys.Check{Name: "round trip", OK: false, Info: err.Error()})
	}
	defer test.Zero()
	w, err := k.Wrap(ctx, keys.ByID("rekey-preflight"), test)
	if err != nil {
		return append(out, keys.Check{Name: "test wrap with " + ref, OK: false, Info: err.Error()})
	}
	if k.isRSA && k.rsaPriv == nil {
		return append(out, keys.Check{Name: "test wrap with " + ref, OK: true, Info: "public key only: unwrap not tested"})
	}
	got, err := k.Unwrap(ctx, keys.ByID("rekey-preflight"), k.mech, w)
	if err != nil {
		return append(out, keys.Check{Name: "test unwrap with " + ref, OK: false, Info: err.Error()})
	}
	defer got.Zero()
	if !bytes.Equal(got.Bytes(), test.Bytes()) {
		return append(out, keys.Check{Name: "test round trip with " + ref, OK: false, Info: "unwrapped key differs from the wrapped one"})
	}
	return append(out, keys.Check{Name: "test wrap/unwrap round trip with " + ref, OK: true, Info: k.mech})
}

// Matches reports whether a DEK table's kek reference names this key.
func (k *KEK) Matches(ref string) bool { return SameKey(ref, k.uri.KeyURI()) }

// CustodianID names the HSM (module and token) this key lives on, so
// per-HSM budgets are shared by every key on it.
func (k *KEK) CustodianID() string { return k.uri.custodian() }
