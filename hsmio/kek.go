package hsmio

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // OAEP-SHA1 is what SoftHSM offers; it is not used for signatures.
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
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
	isAES bool
	isRSA bool
	// hasPriv: the token holds the private key of the pair (else only the
	// public key: wrap only).
	hasPriv bool
	rsaPub  *rsa.PublicKey

	// objs are the key's crypto11 objects in the token's current
	// generation, found again on first use after a replacement.
	objs   atomic.Pointer[c11Key]
	objMu  sync.Mutex    // serializes finding objs again
	handle atomic.Uint64 // the AES key's token object handle, once found
	// copy is the AES key's session copy (sessioncopy.go); nil for RSA
	// keys, and when copies were switched off at open.
	copy   *keyCopy
	keyURI string // URI(), computed once: it keys the DEK cache on every lookup
	// noRewrap is set once the token has shown it cannot rewrap inside
	// (see rewrap.go); rewraps then go through rekey.
	noRewrap atomic.Bool
	// oaep remembers, per RSA-OAEP wrap, that the token refused its
	// parameters: later unwraps fail at once with the same advice.
	oaepMu sync.Mutex
	oaep   map[string]error
}

// c11Key is a KEK's crypto11 objects in one generation.
type c11Key struct {
	gen     *generation
	copy    *sessionCopy             // the session copy crypto11 could see (checked when the key is opened), nil: the token object
	rsaPriv crypto11.SignerDecrypter // nil if only the public key is present
}

var _ keys.KEK = (*KEK)(nil)
var _ keys.Generator = (*KEK)(nil)
var _ keys.Preflighter = (*KEK)(nil)

// retry is hsmio's own retry of transient HSM errors, for what no
// keys.WithRetry wraps (opening a key, the preflight): the same policy.
// n, if not nil, counts the transient errors that were retried.
func retry(ctx context.Context, n *retried, op func() error) error {
	return keys.RetryPolicy{}.Do(ctx, func() error {
		err := op()
		if err != nil && keys.IsRetryable(err) && n != nil {
			n.add(err)
		}
		return err
	})
}

// retried counts the transient errors a retry absorbed.
type retried struct {
	n     int
	first error
}

func (r *retried) add(err error) {
	if r.first == nil {
		r.first = err
	}
	r.n++
}

// Open logs in to the token named by uri and finds the key. Transient HSM
// errors are retried (keys.RetryPolicy's bounds).
func Open(ctx context.Context, uri string, opts keys.Options) (*KEK, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	var k *KEK
	if err := retry(ctx, nil, func() (err error) { k, err = open(ctx, u, opts); return err }); err != nil {
		return nil, err
	}
	return k, nil
}

func open(ctx context.Context, u URI, opts keys.Options) (*KEK, error) {
	tok, err := openToken(u, opts.Sessions)
	if err != nil {
		return nil, err
	}
	k := &KEK{uri: u, tok: tok, keyURI: u.KeyURI()}
	if err := tok.withC11(ctx, k.find); err != nil {
		return nil, err
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
	return k, nil
}

// find looks the key up in generation g when it is opened: an AES secret
// key (and its session copy), else an RSA key pair.
func (k *KEK) find(g *generation) error {
	u := k.uri
	ref := u.KeyURI()
	if u.Type == "" || u.Type == "secret-key" {
		sk, err := g.c11.FindKeyWithAttributes(k.tokenKey())
		if err != nil && strings.Contains(err.Error(), "not found") {
			sk, err = nil, nil
		}
		if err != nil {
			return classify(err, "find key "+ref)
		}
		if sk != nil {
			k.isAES = true
			if !noSessionCopies.Load() {
				k.copy = k.tok.copyOf(u)
				k.copy.reopened()
			}
			if _, err := k.in(g); err != nil {
				return classify(err, "find key "+ref)
			}
			return nil
		}
	}
	if u.Type != "secret-key" {
		id, label := k.lookup()
		kp, err := g.c11.FindKeyPair(id, label)
		if err != nil && strings.Contains(err.Error(), "not found") {
			kp, err = nil, nil
		}
		if err != nil {
			return classify(err, "find key pair "+ref)
		}
		if kp != nil {
			pub, ok := kp.Public().(*rsa.PublicKey)
			if !ok {
				return fmt.Errorf("key %s: %w: it is a %T key pair; rekey wraps DEKs with AES or RSA key pairs", ref, keys.ErrMechanism, kp.Public())
			}
			o := &c11Key{gen: g}
			k.isRSA, k.rsaPub = true, pub
			if sd, ok := kp.(crypto11.SignerDecrypter); ok {
				o.rsaPriv, k.hasPriv = sd, true
			}
			k.objs.Store(o)
			return nil
		}
	}
	return fmt.Errorf("key %s on token %q: %w (check object= in the URI; list keys with: pkcs11-tool --module %s --token-label %q --login --list-objects)", ref, u.Token, keys.ErrKeyNotFound, u.ModulePath, u.Token)
}

// tokenKey is crypto11's search for the AES key's token object: CKA_TOKEN
// keeps the process's session copies, which share its id, out of it.
func (k *KEK) tokenKey() crypto11.AttributeSet {
	a := crypto11.NewAttributeSet()
	id, label := k.lookup()
	if id != nil {
		_ = a.Set(crypto11.CkaId, id)
	}
	if label != nil {
		_ = a.Set(crypto11.CkaLabel, label)
	}
	_ = a.Set(crypto11.CkaToken, true)
	return a
}

func (k *KEK) lookup() (id, label []byte) {
	if len(k.uri.ID) > 0 {
		id = k.uri.ID
	}
	if k.uri.Object != "" {
		label = []byte(k.uri.Object)
	}
	return id, label
}

// in returns the key's crypto11 objects in generation g, finding the key
// again if g replaced the generation it was found in or its session copy
// changed (a pointer compare otherwise: no PKCS#11 call). A new
// generation means sessions were lost: the copy is checked, and replaced
// if it went with them.
func (k *KEK) in(g *generation) (*c11Key, error) {
	if o := k.objs.Load(); k.fresh(o, g) {
		return o, nil
	}
	k.objMu.Lock()
	defer k.objMu.Unlock()
	old := k.objs.Load()
	if k.fresh(old, g) {
		return old, nil
	}
	ref := k.URI()
	gone := func(err error) error {
		if strings.Contains(err.Error(), "not found") {
			return fmt.Errorf("key %s: %w (it was there when rekey opened it)", ref, keys.ErrKeyNotFound)
		}
		return err
	}
	o := &c11Key{gen: g}
	switch {
	case k.isAES:
		var cp *sessionCopy
		if k.copy != nil {
			if old != nil && old.gen != g {
				cp = k.copy.renew()
			} else {
				cp = k.copy.current()
			}
		}
		var sk *crypto11.SecretKey
		var err error
		if cp != nil {
			a := crypto11.NewAttributeSet()
			_ = a.Set(crypto11.CkaLabel, cp.label)
			_ = a.Set(crypto11.CkaToken, false)
			sk, err = g.c11.FindKeyWithAttributes(a)
			if err != nil && strings.Contains(err.Error(), "not found") {
				// The token keeps session objects to the session that
				// made them (against PKCS#11): crypto11 cannot use copies.
				k.copy.disable(cp, "crypto11's sessions do not see a session copy made on another session of the process (the token keeps session objects to their session)")
				cp, err = nil, nil
			}
			if err != nil {
				return nil, err
			}
		}
		if cp == nil {
			if sk, err = g.c11.FindKeyWithAttributes(k.tokenKey()); err != nil {
				return nil, gone(err)
			}
		}
		if sk == nil {
			return nil, fmt.Errorf("key %s: %w (it was there when rekey opened it)", ref, keys.ErrKeyNotFound)
		}
		o.copy = cp
	case k.hasPriv:
		id, label := k.lookup()
		kp, err := g.c11.FindKeyPair(id, label)
		if err != nil {
			return nil, gone(err)
		}
		sd, ok := kp.(crypto11.SignerDecrypter)
		if !ok {
			return nil, fmt.Errorf("key %s: %w: the private key is gone", ref, keys.ErrKeyNotFound)
		}
		o.rsaPriv = sd
	}
	k.objs.Store(o)
	return o, nil
}

// fresh reports whether o holds the key's objects in g, made from the key's
// current session copy (if any) whose holder is still open.
func (k *KEK) fresh(o *c11Key, g *generation) bool {
	if o == nil || o.gen != g {
		return false
	}
	if k.copy == nil {
		return true
	}
	return o.copy == k.copy.cur.Load() && (o.copy == nil || o.copy.live())
}

func (k *KEK) checkMech(m string) error {
	switch m {
	case schemas.WrapAESGCM, schemas.WrapAESKWP:
		if !k.isAES {
			return fmt.Errorf("key %s: %w: %s needs an AES key, this is an RSA key pair (use rsa-oaep-sha256 or rsa-oaep-sha1)", k.URI(), keys.ErrMechanism, m)
		}
	case schemas.WrapRSAOAEPSHA1, schemas.WrapRSAOAEPSHA256, schemas.WrapRSAPKCS1:
		if !k.isRSA {
			return fmt.Errorf("key %s: %w: %s needs an RSA key pair, this is an AES key (use aes-gcm or aes-kwp)", k.URI(), keys.ErrMechanism, m)
		}
	default:
		return fmt.Errorf("key %s: %w: unknown wrap %q (pkcs11 wraps with: %v)", k.URI(), keys.ErrMechanism, m, schemas.WrapMechanisms)
	}
	return nil
}

// ckm is the PKCS#11 mechanism each wrap uses on the token, and its name.
var ckm = map[string]struct {
	m    uint
	name string
}{
	schemas.WrapAESGCM:        {pkcs11.CKM_AES_GCM, "CKM_AES_GCM"},
	schemas.WrapAESKWP:        {pkcs11.CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"},
	schemas.WrapRSAOAEPSHA1:   {pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP with SHA-1"},
	schemas.WrapRSAOAEPSHA256: {pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP with SHA-256"},
	schemas.WrapRSAPKCS1:      {pkcs11.CKM_RSA_PKCS, "CKM_RSA_PKCS (PKCS#1 v1.5)"},
}

// offered lists the wraps for this key's type whose mechanism the token
// lists (nil if it lists none).
func (k *KEK) offered(except string) []string {
	mechs := k.tok.mechanisms()
	var out []string
	for _, m := range []string{schemas.WrapAESGCM, schemas.WrapAESKWP, schemas.WrapRSAOAEPSHA256, schemas.WrapRSAOAEPSHA1} {
		if m == except || k.checkMech(m) != nil {
			continue
		}
		if _, ok := mechs[ckm[m].m]; !ok {
			continue
		}
		if k.oaepRefused(m) != nil {
			continue
		}
		out = append(out, m)
	}
	return out
}

// noMech is the error for a wrap the token cannot do: it names the
// mechanism and what the token offers instead.
func (k *KEK) noMech(m string, cause error) error {
	var msg string
	if cause != nil {
		msg = fmt.Sprintf("token %q cannot do %s (%s): %v", k.tok.name, m, ckm[m].name, cause)
	} else {
		msg = fmt.Sprintf("token %q does not offer %s (%s is not in its mechanism list)", k.tok.name, m, ckm[m].name)
	}
	if alt := k.offered(m); len(alt) > 0 {
		msg += fmt.Sprintf("; it offers %s: use that wrap (--target-wrap %s for new wraps)", strings.Join(alt, ", "), alt[0])
	} else {
		msg += "; it offers no other wrap for this key"
	}
	return fmt.Errorf("%w: %s", keys.ErrMechanism, msg)
}

// tokenOffers checks that the token lists the mechanism of wrap m (a token
// that lists no mechanisms is trusted to have it).
func (k *KEK) tokenOffers(m string) error {
	mechs := k.tok.mechanisms()
	if mechs == nil {
		return nil
	}
	if _, ok := mechs[ckm[m].m]; !ok {
		return k.noMech(m, nil)
	}
	if m != schemas.WrapRSAOAEPSHA256 && m != schemas.WrapRSAOAEPSHA1 {
		return nil // only OAEP parameters are refused after the fact
	}
	return k.oaepRefused(m)
}

func (k *KEK) oaepRefused(m string) error {
	k.oaepMu.Lock()
	defer k.oaepMu.Unlock()
	return k.oaep[m]
}

// URI implements keys.KEK.
func (k *KEK) URI() string { return k.keyURI }

// Mechanism implements keys.KEK.
func (k *KEK) Mechanism() string { return k.mech }

// handleInvalid reports the token saying a key handle is no longer valid.
func handleInvalid(err error) bool {
	p, ok := errCode(err)
	if !ok {
		return false
	}
	switch p {
	case pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// copyGone reports an error after which the key handle must be checked:
// an invalid handle, and any error of an operation on a session copy. A
// copy destroyed under an operation (its holder closed by another goroutine
// in a fail-over, after the token found the object) makes SoftHSM2 read
// the object's attributes as defaults, so the operation fails with whatever
// that implies (CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_TYPE_INCONSISTENT,
// CKR_MECHANISM_INVALID, ...), not with an invalid handle. The copy is then
// checked (one attribute read, on errors only) and the operation run again
// on a live one; when the copy is alive the error is returned as it is.
func copyGone(err error, onCopy bool) bool {
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case handleInvalid(err):
		return true
	}
	return onCopy
}

// withKey runs f on a raw session with the AES key's handle: its session
// copy's, else its token object's. A handle the token no longer knows (a
// lost holder, a fail-over) is looked up or copied again, and f runs again.
func (k *KEK) withKey(ctx context.Context, f func(sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error) error {
	return k.tok.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		for try := 0; ; try++ {
			h, cp, err := k.aesHandle(sh)
			if err != nil {
				return err
			}
			err = f(sh, h)
			if !copyGone(err, cp != nil) || try == maxReplace {
				return err
			}
			if !k.handleLost(h, cp, err) {
				return err
			}
		}
	})
}

// handleLost is called after an operation with handle h failed with err:
// a session copy is checked and replaced if it is gone, a token object
// the token said is invalid is looked up again. It reports whether the
// operation should run again.
func (k *KEK) handleLost(h pkcs11.ObjectHandle, cp *sessionCopy, err error) bool {
	if cp != nil {
		return k.copy.lost(cp)
	}
	if !handleInvalid(err) {
		return false
	}
	k.handle.CompareAndSwap(uint64(h), 0)
	return true
}

// Wrap implements keys.KEK.
func (k *KEK) Wrap(ctx context.Context, b keys.Binding, dek *keys.DEK) (out []byte, err error) {
	// The message is built only when an error needs it.
	what := func() string { return fmt.Sprintf("wrap DEK (%s) with %s (%s)", b, k.URI(), k.mech) }
	switch k.mech {
	case schemas.WrapAESGCM:
		if err := k.tokenOffers(k.mech); err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		nonce := make([]byte, schemas.NonceSize)
		if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
			return nil, err
		}
		aad := gcmAAD(b)
		err = k.withKey(ctx, func(sh pkcs11.SessionHandle, kek pkcs11.ObjectHandle) error {
			ct, err := k.tok.gcmOp(sh, kek, true, nonce, aad, dek.Bytes())
			if err != nil {
				return err
			}
			if len(ct) != dek.Len()+schemas.TagSize {
				return fmt.Errorf("the token's CKM_AES_GCM returned %d bytes for a %d-byte key, want %d", len(ct), dek.Len(), dek.Len()+schemas.TagSize)
			}
			// nonce has no spare capacity: append copies it.
			out = append(nonce, ct...)
			return nil
		})
		if err != nil {
			return nil, classify(err, what())
		}
		return out, nil
	case schemas.WrapAESKWP:
		if dek.Len()%8 != 0 {
			// RFC 5649 pads other lengths, and the padding does not
			// always come off again on unwrap (SoftHSM returns it).
			return nil, fmt.Errorf("%s: %w: aes-kwp wraps secrets whose length is a multiple of 8 bytes; this one is %d (use aes-gcm)", what(), keys.ErrMechanism, dek.Len())
		}
		if err := k.tokenOffers(k.mech); err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		err = k.withKey(ctx, func(sh pkcs11.SessionHandle, kek pkcs11.ObjectHandle) error {
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
			return nil, classify(err, what())
		}
		return out, nil
	case schemas.WrapRSAOAEPSHA256, schemas.WrapRSAOAEPSHA1:
		if k.hasPriv {
			// A wrap the token will not unwrap is no wrap at all.
			if err := k.oaepRefused(k.mech); err != nil {
				return nil, fmt.Errorf("%s: %w", what(), err)
			}
		}
		h := sha256.New()
		if k.mech == schemas.WrapRSAOAEPSHA1 {
			h = sha1.New() //nolint:gosec
		}
		out, err = rsa.EncryptOAEP(h, rand.Reader, k.rsaPub, dek.Bytes(), nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		return out, nil
	case schemas.WrapRSAPKCS1:
		out, err = rsa.EncryptPKCS1v15(rand.Reader, k.rsaPub, dek.Bytes())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s: %w: unknown wrap", what(), keys.ErrMechanism)
}

// badParams reports a token refusing a mechanism's parameters: SoftHSM
// answers CKR_ARGUMENTS_BAD to OAEP with SHA-256, others
// CKR_MECHANISM_PARAM_INVALID or CKR_MECHANISM_INVALID.
func badParams(err error) bool {
	p, ok := errCode(err)
	return ok && (p == pkcs11.CKR_ARGUMENTS_BAD || p == pkcs11.CKR_MECHANISM_PARAM_INVALID || p == pkcs11.CKR_MECHANISM_INVALID)
}

// decryptOAEP decrypts with the private key on the token, through crypto11.
func (k *KEK) decryptOAEP(ctx context.Context, mech string, wrapped []byte) (plain []byte, err error) {
	h := crypto.SHA256
	if mech == schemas.WrapRSAOAEPSHA1 {
		h = crypto.SHA1
	}
	err = k.tok.withC11(ctx, func(g *generation) error {
		o, err := k.in(g)
		if err != nil {
			return err
		}
		plain, err = o.rsaPriv.Decrypt(nil, wrapped, &rsa.OAEPOptions{Hash: h})
		return err
	})
	return plain, err
}

// refuseOAEP records that the token refused the parameters of an OAEP
// wrap, after checking whether it takes the other OAEP wrap (a test
// decryption of a random secret), so the advice names one that works.
func (k *KEK) refuseOAEP(ctx context.Context, mech string, cause error) error {
	other := schemas.WrapRSAOAEPSHA1
	if mech == schemas.WrapRSAOAEPSHA1 {
		other = schemas.WrapRSAOAEPSHA256
	}
	k.oaepMu.Lock()
	if k.oaep == nil {
		k.oaep = map[string]error{}
	}
	k.oaep[mech] = fmt.Errorf("%w: token %q cannot do %s (%s): %v", keys.ErrMechanism, k.tok.name, mech, ckm[mech].name, cause)
	k.oaepMu.Unlock()
	if k.oaepRefused(other) == nil {
		secret := make([]byte, keys.DEKSize)
		if _, err := io.ReadFull(rand.Reader, secret); err == nil {
			h := sha256.New()
			if other == schemas.WrapRSAOAEPSHA1 {
				h = sha1.New() //nolint:gosec
			}
			if ct, err := rsa.EncryptOAEP(h, rand.Reader, k.rsaPub, secret, nil); err == nil {
				got, err := k.decryptOAEP(ctx, other, ct)
				if badParams(err) || (err == nil && !bytes.Equal(got, secret)) {
					k.oaepMu.Lock()
					k.oaep[other] = fmt.Errorf("%w: token %q cannot do %s (%s)", keys.ErrMechanism, k.tok.name, other, ckm[other].name)
					k.oaepMu.Unlock()
				}
				clear(got)
			}
		}
		clear(secret)
	}
	err := k.noMech(mech, cause)
	k.oaepMu.Lock()
	k.oaep[mech] = err
	k.oaepMu.Unlock()
	return err
}

// Unwrap implements keys.KEK.
func (k *KEK) Unwrap(ctx context.Context, b keys.Binding, mech string, wrapped []byte) (*keys.DEK, error) {
	// The message is built only when an error needs it.
	what := func() string { return fmt.Sprintf("unwrap DEK (%s) with %s (%s)", b, k.URI(), mech) }
	if err := k.checkMech(mech); err != nil {
		return nil, fmt.Errorf("%s: %w", what(), err)
	}
	if len(wrapped) > schemas.MaxWrappedDEK {
		return nil, fmt.Errorf("%s: %w: wrapped key is %d bytes", what(), keys.ErrUnwrapFailed, len(wrapped))
	}
	var plain []byte
	defer func() { clear(plain) }()
	var err error
	switch mech {
	case schemas.WrapAESGCM:
		if n := len(wrapped) - schemas.NonceSize - schemas.TagSize; n < keys.MinSecret || n > keys.MaxSecret {
			return nil, fmt.Errorf("%s: %w: wrapped key is %d bytes, want %d to %d", what(), keys.ErrUnwrapFailed, len(wrapped), schemas.NonceSize+keys.MinSecret+schemas.TagSize, schemas.NonceSize+keys.MaxSecret+schemas.TagSize)
		}
		if err := k.tokenOffers(mech); err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		aad := gcmAAD(b)
		err = k.withKey(ctx, func(sh pkcs11.SessionHandle, kek pkcs11.ObjectHandle) error {
			var err error
			plain, err = k.tok.gcmOp(sh, kek, false, wrapped[:schemas.NonceSize], aad, wrapped[schemas.NonceSize:])
			return err
		})
	case schemas.WrapAESKWP:
		// RFC 5649: an 8-byte integrity block plus the padded key, in
		// 8-byte blocks.
		if len(wrapped) < 8+keys.MinSecret || len(wrapped)%8 != 0 {
			return nil, fmt.Errorf("%s: %w: an aes-kwp wrapped key is a multiple of 8 bytes and at least %d; this one is %d", what(), keys.ErrUnwrapFailed, 8+keys.MinSecret, len(wrapped))
		}
		if err := k.tokenOffers(mech); err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		err = k.withKey(ctx, func(sh pkcs11.SessionHandle, kek pkcs11.ObjectHandle) error {
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
		if !k.hasPriv {
			return nil, fmt.Errorf("%s: %w: the token holds only the public key", what(), keys.ErrKeyNotFound)
		}
		if err := k.tokenOffers(mech); err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		plain, err = k.decryptOAEP(ctx, mech, wrapped)
		if badParams(err) {
			return nil, fmt.Errorf("%s: %w", what(), k.refuseOAEP(ctx, mech, err))
		}
	case schemas.WrapRSAPKCS1:
		if !k.hasPriv {
			return nil, fmt.Errorf("%s: %w: the token holds only the public key", what(), keys.ErrKeyNotFound)
		}
		if err := k.tokenOffers(mech); err != nil {
			return nil, fmt.Errorf("%s: %w", what(), err)
		}
		err = k.tok.withC11(ctx, func(g *generation) error {
			o, err := k.in(g)
			if err != nil {
				return err
			}
			plain, err = o.rsaPriv.Decrypt(nil, wrapped, &rsa.PKCS1v15DecryptOptions{})
			return err
		})
	}
	if err != nil {
		return nil, classify(err, what())
	}
	dek, err := keys.NewDEK(plain)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what(), err)
	}
	return dek, nil
}

// aesHandle returns the handle raw calls use: the session copy's, else
// the token object's, found once (a token object's handle is valid in
// every session of this process, and the search costs three PKCS#11 calls
// per operation otherwise). cp is the copy, nil for the token object.
func (k *KEK) aesHandle(sh pkcs11.SessionHandle) (h pkcs11.ObjectHandle, cp *sessionCopy, err error) {
	if k.copy != nil {
		if cp = k.copy.current(); cp != nil {
			return cp.h, cp, nil
		}
	}
	if h := k.handle.Load(); h != 0 {
		return pkcs11.ObjectHandle(h), nil, nil
	}
	h, ok, err := k.tok.findObject(sh, pkcs11.CKO_SECRET_KEY, k.uri.Object, k.uri.ID)
	if err != nil {
		return 0, nil, err
	}
	if !ok {
		return 0, nil, fmt.Errorf("%w: %s", keys.ErrKeyNotFound, k.URI())
	}
	k.handle.Store(uint64(h))
	return h, nil, nil
}

// GenerateDEK implements keys.Generator with the token's RNG.
func (k *KEK) GenerateDEK(ctx context.Context) (*keys.DEK, error) {
	b := make([]byte, keys.DEKSize)
	defer clear(b)
	err := k.tok.withC11(ctx, func(g *generation) error {
		r, err := g.c11.NewRandomReader()
		if err != nil {
			return err
		}
		_, err = io.ReadFull(r, b)
		return err
	})
	if err != nil {
		return nil, classify(err, "HSM random on token "+k.tok.name)
	}
	return keys.NewDEK(b)
}

// Sessions is how many operations with this key can run at once on its
// token: what the callers asked for (the largest keys.Options.Sessions of
// the opens, and Reserve), capped by the token's session limit
// (C_GetTokenInfo; one session holds the login, one the session copies of
// the keys when the limit leaves room, and the rest are split between
// crypto11's pool, for RSA keys and the token's random generator, and the
// raw sessions every AES key operation runs on). Callers that run
// more workers than this make the others wait for a session: cap the
// workers to it.
func (k *KEK) Sessions() int {
	return k.tok.usable(!k.isRSA)
}

// SessionLimit is the token's session limit, 0 if it reports none.
func (k *KEK) SessionLimit() int { return k.tok.limit }

// Reserve asks for n concurrent operations on the key's token: the pools
// grow to n sessions, within the token's session limit (they never
// shrink), and it returns Sessions. A caller that caches KEKs calls it when
// a later user needs more concurrency than the one that opened the key.
func (k *KEK) Reserve(n int) (int, error) {
	if n > 0 {
		if err := k.tok.reserve(n); err != nil {
			return k.Sessions(), err
		}
	}
	return k.Sessions(), nil
}

// Preflight implements keys.Preflighter: attributes, then a round trip of a
// throwaway key. Transient HSM errors are retried as everywhere else, and
// reported as a warning when there were any.
func (k *KEK) Preflight(ctx context.Context, needWrap, needUnwrap bool) []keys.Check {
	var out []keys.Check
	var tr retried
	ref := k.URI()
	kind := "AES key"
	if k.isRSA {
		kind = "RSA key pair"
		if !k.hasPriv {
			kind = "RSA public key"
		}
	}
	out = append(out, keys.Check{Name: "key " + ref, OK: true, Info: kind + ", wrap " + k.mech})
	if k.isAES {
		out = append(out, keys.Check{Name: "key object used for " + ref, OK: true, Info: k.handleInfo()})
	}
	if limit := k.tok.limit; limit > 0 {
		usable, wanted := k.Sessions(), int(k.tok.wanted.Load())
		kept, keptFor := "1 kept for the login", "1 for its login"
		if k.tok.noHolder == "" {
			kept, keptFor = "2 kept for the login and the session copies", "1 for its login and 1 holding the session copies of its keys"
		}
		c := keys.Check{Name: "sessions on token " + k.tok.name, OK: true,
			Info: fmt.Sprintf("the token allows %d sessions (%d were open elsewhere): rekey keeps %s and runs at most %d %s operations at once", limit, k.tok.others, keptFor, usable, k.mech)}
		if usable < wanted {
			c.Warn = true
			c.Info = fmt.Sprintf("workers capped to %d HSM sessions by the token's session limit %d (%d asked for, %d open elsewhere, %s): the other workers wait for a session; run with --workers %d", usable, limit, wanted, k.tok.others, kept, usable)
		}
		out = append(out, c)
	}
	if err := k.tokenOffers(k.mech); err != nil && !(k.isRSA && !needUnwrap) {
		// An RSA wrap is made here, in software; only its unwrap needs
		// the token's mechanism.
		return append(out, keys.Check{Name: "wrap " + k.mech + " on " + ref, OK: false, Info: err.Error()})
	}
	if k.isRSA && !k.hasPriv {
		if needUnwrap {
			out = append(out, keys.Check{Name: "private key of " + ref, OK: false, Info: "not found: unwrap impossible"})
		}
	} else {
		err := retry(ctx, &tr, func() error {
			checks, err := k.attrChecks(ctx, needWrap, needUnwrap)
			if err == nil {
				out = append(out, checks...)
			}
			return classify(err, "read the attributes of "+ref)
		})
		if err != nil {
			out = append(out, keys.Check{Name: "attributes of " + ref, OK: false, Info: err.Error()})
		}
	}
	out = append(out, k.roundTrip(ctx, &tr, needWrap)...)
	if tr.n > 0 {
		out = append(out, keys.Check{Name: "HSM errors during the preflight of " + ref, OK: true, Warn: true,
			Info: fmt.Sprintf("%d transient error(s), each retried successfully; the first: %v", tr.n, tr.first)})
	}
	return out
}

// attrChecks reads the key's usage attributes.
func (k *KEK) attrChecks(ctx context.Context, needWrap, needUnwrap bool) ([]keys.Check, error) {
	ref := k.URI()
	var checks []keys.Check
	err := k.tok.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		checks = nil
		class := uint(pkcs11.CKO_SECRET_KEY)
		if k.isRSA {
			class = pkcs11.CKO_PRIVATE_KEY
		}
		h, ok, err := k.tok.findObject(sh, class, k.uri.Object, k.uri.ID)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s", keys.ErrKeyNotFound, ref)
		}
		attrs := []uint{pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_SENSITIVE}
		if k.isAES {
			attrs = append(attrs, pkcs11.CKA_ENCRYPT, pkcs11.CKA_WRAP)
		}
		a, err := k.tok.boolAttrs(sh, h, attrs...)
		if err != nil {
			return err
		}
		need := func(attr uint, name string, when bool) {
			if when && !a[attr] {
				checks = append(checks, keys.Check{Name: name + " on " + ref, OK: false, Info: "not set: the key does not permit this operation"})
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
			checks = append(checks, keys.Check{Name: "CKA_EXTRACTABLE on " + ref, OK: true, Warn: true, Info: "the KEK is extractable: a KEK should never leave its HSM; create it with CKA_EXTRACTABLE=false"})
		}
		return nil
	})
	return checks, err
}

// roundTrip wraps a throwaway key and unwraps it again.
func (k *KEK) roundTrip(ctx context.Context, tr *retried, needWrap bool) []keys.Check {
	ref := k.URI()
	if !needWrap {
		// A source key may allow unwrap only; a round trip would need wrap.
		return nil
	}
	test, err := keys.NewDEK(bytes.Repeat([]byte{0x5a}, keys.DEKSize))
	if err != nil {
		return []keys.Check{{Name: "round trip", OK: false, Info: err.Error()}}
	}
	defer test.Zero()
	var w []byte
	if err := retry(ctx, tr, func() (err error) { w, err = k.Wrap(ctx, keys.ByID("rekey-preflight"), test); return err }); err != nil {
		return []keys.Check{{Name: "test wrap with " + ref, OK: false, Info: err.Error()}}
	}
	if k.isRSA && !k.hasPriv {
		return []keys.Check{{Name: "test wrap with " + ref, OK: true, Info: "public key only: unwrap not tested"}}
	}
	var got *keys.DEK
	if err := retry(ctx, tr, func() (err error) { got, err = k.Unwrap(ctx, keys.ByID("rekey-preflight"), k.mech, w); return err }); err != nil {
		return []keys.Check{{Name: "test unwrap with " + ref, OK: false, Info: err.Error()}}
	}
	defer got.Zero()
	if !bytes.Equal(got.Bytes(), test.Bytes()) {
		return []keys.Check{{Name: "test round trip with " + ref, OK: false, Info: "unwrapped key differs from the wrapped one"}}
	}
	return []keys.Check{{Name: "test wrap/unwrap round trip with " + ref, OK: true, Info: k.mech}}
}

// Matches reports whether a DEK table's kek reference names this key.
func (k *KEK) Matches(ref string) bool { return SameKey(ref, k.uri.KeyURI()) }

// CustodianID names the HSM (module and token) this key lives on, so
// per-HSM budgets are shared by every key on it.
func (k *KEK) CustodianID() string { return k.uri.custodian() }
