package inventory

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // OAEP-SHA1 is all SoftHSM offers; OAEP does not rely on collision resistance.
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math/big"
	"strings"

	"github.com/miekg/pkcs11"

	"rekey/hsmio"
	"rekey/providers/keys"
	"rekey/schemas"
)

// CopyOptions configure Copy.
type CopyOptions struct {
	// Transport is auto (default), rsa-oaep or aes-kwp.
	Transport string
	// Extractable creates the copies on the target extractable. By default
	// they are sensitive and not extractable, whatever the source was.
	Extractable bool
}

// CopyResult is what happened to one inventory entry.
type CopyResult struct {
	Key    KeyEntry
	Status string // schemas.StatusMigrated, StatusSkipped or StatusFailed
	// CheckValue identifies the key without revealing it: for secret keys a
	// key check value computed inside the HSM ("aes-ecb:…", "hmac-sha256:…",
	// "aes-cmac:…", "check-value:…"), for key pairs the SHA-256 of the
	// public key ("spki-sha256:…"), proven held on both sides by a signature
	// or decryption made inside each HSM.
	CheckValue string
	Target     string // the key's URI on the target
	Note       string // why it was skipped
	Err        error
}

// CopyReport is the outcome of Copy.
type CopyReport struct {
	Transport string // e.g. "aes-kwp (transport key delivered with rsa-oaep-sha1)"
	Results   []CopyResult
	// Cleanup lists transport keys that could not be destroyed explicitly.
	// They are session objects, gone when the KeyTokens are closed.
	Cleanup []error
}

// Copy moves every transferable key of src's inventory to dst, wrapped
// under a transport key made for this call and destroyed afterwards. Keys
// that are already on dst (same label, same check value) are skipped; a
// same-label object with another check value is never overwritten and is
// reported as failed. It refuses to start (ErrNoTransport) when the tokens
// have no transport in common.
func Copy(ctx context.Context, src, dst *KeyToken, opts CopyOptions) (*CopyReport, error) {
	if src.sameToken(dst) {
		return nil, fmt.Errorf("copy keys: source and target are the same token %q (give another token in --to)", src.Label())
	}
	inv, err := src.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	rep := &CopyReport{Results: make([]CopyResult, len(inv))}
	var moving []int
	for i, e := range inv {
		rep.Results[i] = CopyResult{Key: e, Status: schemas.StatusSkipped, Note: e.Disposition + ": " + e.Why}
		if e.Disposition == Transferable {
			moving = append(moving, i)
		}
	}
	if len(moving) == 0 {
		return rep, nil
	}
	kind, err := PlanTransport(ctx, src, dst, opts.Transport)
	if err != nil {
		return nil, err
	}
	tr, err := newTransport(src, dst, kind)
	if err != nil {
		rep.Cleanup = tr.destroy()
		return nil, err
	}
	rep.Transport = tr.describe()
	defer func() { rep.Cleanup = tr.destroy() }()
	for _, i := range moving {
		r := &rep.Results[i]
		r.Note = ""
		if err := ctx.Err(); err != nil {
			r.Status, r.Err = schemas.StatusFailed, fmt.Errorf("key %q: not copied: %w (run keys copy again: copied keys are skipped)", r.Key.Label, err)
			continue
		}
		if r.Key.Kind == KindSecret {
			tr.copySecret(r, opts)
		} else {
			tr.copyPrivate(r, opts)
		}
	}
	return rep, nil
}

// PlanTransport lists both tokens' mechanisms and picks the transport.
func PlanTransport(ctx context.Context, src, dst *KeyToken, want string) (string, error) {
	sm, err := src.Mechanisms(ctx)
	if err != nil {
		return "", err
	}
	dm, err := dst.Mechanisms(ctx)
	if err != nil {
		return "", err
	}
	return ChooseTransport(src.Label(), sm, dst.Label(), dm, want)
}

// transport holds the keys of one run's transport.
type transport struct {
	kind     string
	src, dst *KeyToken
	oaepHash uint                // CKM_SHA256 or CKM_SHA_1
	wrapper  pkcs11.ObjectHandle // on src
	unwraper pkcs11.ObjectHandle // on dst
	label    string
	made     []madeObj
	// noValueLen: the target refuses CKA_VALUE_LEN in unwrap templates.
	noValueLen bool
	// leftover lists session objects that could not be destroyed.
	leftover []error
}

type madeObj struct {
	k    *KeyToken
	h    pkcs11.ObjectHandle
	what string
}

func (t *transport) describe() string {
	h := "sha1"
	if t.oaepHash == pkcs11.CKM_SHA256 {
		h = "sha256"
	}
	if t.kind == TransportAESKWP {
		return "aes-kwp (AES-256 transport key generated on the target, delivered to the source with rsa-oaep-" + h + ")"
	}
	return "rsa-oaep-" + h + " (RSA-3072 transport key pair generated on the target)"
}

// destroy removes every transport object; it is safe on a nil transport.
func (t *transport) destroy() []error {
	if t == nil {
		return nil
	}
	var errs []error
	for i := len(t.made) - 1; i >= 0; i-- {
		m := t.made[i]
		sh, err := m.k.session()
		if err == nil {
			err = m.k.api.DestroyObject(sh, m.h)
		}
		var p pkcs11.Error
		if err != nil && !(errors.As(err, &p) && p == pkcs11.CKR_OBJECT_HANDLE_INVALID) {
			errs = append(errs, fmt.Errorf("destroy %s %q on token %q: %v (it is a session object: it disappears when rekey exits)", m.what, t.label, m.k.Label(), err))
		}
	}
	t.made = nil
	errs = append(errs, t.leftover...)
	t.leftover = nil
	return errs
}

func oaep(hash uint) []*pkcs11.Mechanism {
	mgf := uint(pkcs11.CKG_MGF1_SHA1)
	if hash == pkcs11.CKM_SHA256 {
		mgf = pkcs11.CKG_MGF1_SHA256
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.NewOAEPParams(hash, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil))}
}

var kwp = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}

const transportRSABits = 3072

func newTransport(src, dst *KeyToken, kind string) (*transport, error) {
	tag := make([]byte, 6)
	if _, err := rand.Read(tag); err != nil {
		return nil, err
	}
	t := &transport{kind: kind, src: src, dst: dst, label: "rekey-transport-" + hex.EncodeToString(tag)}
	switch kind {
	case TransportRSAOAEP:
		pub, priv, err := t.genRSA(dst)
		if err != nil {
			return t, err
		}
		imp, err := t.importRSA(dst, pub, src)
		if err != nil {
			return t, err
		}
		t.wrapper, t.unwraper = imp, priv
		var tries []string
		for _, h := range []uint{pkcs11.CKM_SHA256, pkcs11.CKM_SHA_1} {
			err := t.probeOAEP(h)
			if err == nil {
				t.oaepHash = h
				return t, nil
			}
			tries = append(tries, fmt.Sprintf("OAEP %s: %v", hashName(h), err))
		}
		return t, fmt.Errorf("test of the rsa-oaep transport from %q to %q failed, nothing was copied: %s", src.Label(), dst.Label(), strings.Join(tries, "; "))
	case TransportAESKWP:
		pub, priv, err := t.genRSA(src)
		if err != nil {
			return t, err
		}
		imp, err := t.importRSA(src, pub, dst)
		if err != nil {
			return t, err
		}
		sh, err := dst.session()
		if err != nil {
			return t, err
		}
		aes, err := dst.api.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // once, to reach the source
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, t.label),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		})
		if err != nil {
			return t, hsmio.Classify(err, fmt.Sprintf("generate the AES transport key on target token %q", dst.Label()))
		}
		t.made = append(t.made, madeObj{dst, aes, "AES transport key"})
		var tries []string
		for _, h := range []uint{pkcs11.CKM_SHA256, pkcs11.CKM_SHA_1} {
			srcAES, err := t.deliverAES(h, imp, aes, priv)
			if err == nil {
				t.oaepHash, t.wrapper, t.unwraper = h, srcAES, aes
				break
			}
			tries = append(tries, fmt.Sprintf("OAEP %s: %v", hashName(h), err))
		}
		if t.wrapper == 0 {
			return t, fmt.Errorf("deliver the AES transport key from target %q to source %q failed, nothing was copied: %s", dst.Label(), src.Label(), strings.Join(tries, "; "))
		}
		// The target's copy never needs to leave again. Tokens that refuse
		// the change keep it as a session object until the end of the run.
		_ = dst.api.SetAttributeValue(sh, aes, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false)})
		// The RSA bootstrap keys are done.
		for _, m := range []madeObj{{src, pub, ""}, {src, priv, ""}, {dst, imp, ""}} {
			if s, err := m.k.session(); err == nil && m.k.api.DestroyObject(s, m.h) == nil {
				t.forget(m.k, m.h)
			}
		}
		return t, nil
	}
	return t, fmt.Errorf("%w: unknown transport %q", keys.ErrMechanism, kind)
}

func (t *transport) forget(k *KeyToken, h pkcs11.ObjectHandle) {
	for i, m := range t.made {
		if m.k == k && m.h == h {
			t.made = append(t.made[:i], t.made[i+1:]...)
			return
		}
	}
}

func hashName(h uint) string {
	if h == pkcs11.CKM_SHA256 {
		return "SHA-256"
	}
	return "SHA-1"
}

// genRSA makes a session RSA key pair on k whose private half can only
// unwrap and whose public half can only wrap.
func (t *transport) genRSA(k *KeyToken) (pub, priv pkcs11.ObjectHandle, err error) {
	sh, err := k.session()
	if err != nil {
		return 0, 0, err
	}
	pub, priv, err = k.api.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, transportRSABits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, t.label),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, t.label),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		})
	if err != nil {
		return 0, 0, hsmio.Classify(err, fmt.Sprintf("generate the RSA transport key pair on token %q", k.Label()))
	}
	t.made = append(t.made, madeObj{k, pub, "RSA transport public key"}, madeObj{k, priv, "RSA transport private key"})
	return pub, priv, nil
}

// importRSA copies the public key pub of from into a session object on to
// that may only wrap.
func (t *transport) importRSA(from *KeyToken, pub pkcs11.ObjectHandle, to *KeyToken) (pkcs11.ObjectHandle, error) {
	n, ok1, err := from.attr(pub, pkcs11.CKA_MODULUS)
	if err != nil {
		return 0, err
	}
	e, ok2, err := from.attr(pub, pkcs11.CKA_PUBLIC_EXPONENT)
	if err != nil {
		return 0, err
	}
	if !ok1 || !ok2 {
		return 0, fmt.Errorf("token %q shows no modulus/exponent of its RSA transport public key", from.Label())
	}
	sh, err := to.session()
	if err != nil {
		return 0, err
	}
	h, err := to.api.CreateObject(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, n),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, e),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, t.label),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
	})
	if err != nil {
		return 0, hsmio.Classify(err, fmt.Sprintf("import the RSA transport public key of %q into token %q", from.Label(), to.Label()))
	}
	t.made = append(t.made, madeObj{to, h, "imported RSA transport public key"})
	return h, nil
}

// probeOAEP moves a throwaway AES key from src to dst with OAEP(hash), to
// find the parameters both tokens accept before any real key moves.
func (t *transport) probeOAEP(h uint) error {
	ssh, err := t.src.session()
	if err != nil {
		return err
	}
	dsh, err := t.dst.session()
	if err != nil {
		return err
	}
	probe, err := t.src.api.GenerateKey(ssh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 16),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, t.label+"-probe"),
	})
	if err != nil {
		return hsmio.Classify(err, fmt.Sprintf("generate a probe key on source token %q", t.src.Label()))
	}
	defer func() { _ = t.src.api.DestroyObject(ssh, probe) }()
	blob, err := t.src.api.WrapKey(ssh, oaep(h), t.wrapper, probe)
	if err != nil {
		return hsmio.Classify(err, fmt.Sprintf("wrap on source token %q", t.src.Label()))
	}
	got, err := t.dst.api.UnwrapKey(dsh, oaep(h), t.unwraper, blob, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, t.label+"-probe"),
	})
	if err != nil {
		return hsmio.Classify(err, fmt.Sprintf("unwrap on target token %q", t.dst.Label()))
	}
	_ = t.dst.api.DestroyObject(dsh, got)
	return nil
}

// deliverAES wraps the target's AES transport key with OAEP(hash) under the
// source's RSA key and unwraps it on the source as a wrap-only session key.
func (t *transport) deliverAES(h uint, imp, aes, priv pkcs11.ObjectHandle) (pkcs11.ObjectHandle, error) {
	dsh, err := t.dst.session()
	if err != nil {
		return 0, err
	}
	ssh, err := t.src.session()
	if err != nil {
		return 0, err
	}
	blob, err := t.dst.api.WrapKey(dsh, oaep(h), imp, aes)
	if err != nil {
		return 0, hsmio.Classify(err, fmt.Sprintf("wrap the AES transport key on target token %q", t.dst.Label()))
	}
	got, err := t.src.api.UnwrapKey(ssh, oaep(h), priv, blob, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, t.label),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
	})
	if err != nil {
		return 0, hsmio.Classify(err, fmt.Sprintf("unwrap the AES transport key on source token %q", t.src.Label()))
	}
	t.made = append(t.made, madeObj{t.src, got, "AES transport key (source copy)"})
	return got, nil
}

// move wraps key on the source once, and unwraps it on the target twice:
// first as a session object (the trial copy), which check must accept,
// then, the trial destroyed, as the token object tmpl describes, which
// check must accept too. So nothing is stored on the target before the
// copy is known to be right, and a failed attempt leaves nothing behind
// (SoftHSM keeps a half-made token object in its store when an unwrap into
// the token fails on the template; a failed session object is gone with
// the session).
func (t *transport) move(key pkcs11.ObjectHandle, label string, tmpl []*pkcs11.Attribute, check func(pkcs11.ObjectHandle) error) (pkcs11.ObjectHandle, error) {
	ssh, err := t.src.session()
	if err != nil {
		return 0, err
	}
	dsh, err := t.dst.session()
	if err != nil {
		return 0, err
	}
	mech := kwp
	if t.kind == TransportRSAOAEP {
		mech = oaep(t.oaepHash)
	}
	blob, err := t.src.api.WrapKey(ssh, mech, t.wrapper, key)
	if err != nil {
		return 0, fmt.Errorf("%w; nothing was created on the target", hsmio.Classify(err, fmt.Sprintf("wrap key %q on source token %q", label, t.src.Label())))
	}
	defer clear(blob)
	trial := append(without(tmpl, pkcs11.CKA_TOKEN), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false))
	h, err := t.unwrap(dsh, mech, blob, trial)
	if err != nil {
		return 0, fmt.Errorf("%w; nothing was created on the target", hsmio.Classify(err, fmt.Sprintf("unwrap key %q on target token %q", label, t.dst.Label())))
	}
	err = check(h)
	if derr := t.dst.destroy(h); derr != nil {
		// A session object: it goes with the session at the latest.
		t.leftover = append(t.leftover, fmt.Errorf("destroy the trial copy of %q on token %q: %v (it is a session object: it disappears when rekey exits)", label, t.dst.Label(), derr))
	}
	if err != nil {
		return 0, fmt.Errorf("key %q: the copy on target token %q is not verified: %w; the copy was destroyed (it was a session object: nothing was stored on the target)", label, t.dst.Label(), err)
	}
	h, err = t.unwrap(dsh, mech, blob, tmpl)
	if err != nil {
		return 0, fmt.Errorf("%w; nothing was stored on the target", hsmio.Classify(err, fmt.Sprintf("unwrap key %q into target token %q", label, t.dst.Label())))
	}
	if err := check(h); err != nil {
		_ = t.dst.destroy(h)
		return 0, fmt.Errorf("key %q: the stored copy on target token %q is not verified (its trial copy was): %w; the copy was destroyed", label, t.dst.Label(), err)
	}
	return h, nil
}

// unwrap unwraps blob on the target with tmpl. Some tokens show the size
// of an unwrapped key only when the template gives CKA_VALUE_LEN; others
// (SoftHSM) refuse it: the first unwrap (a trial copy, a session object)
// finds out which, and later ones follow.
func (t *transport) unwrap(sh pkcs11.SessionHandle, mech []*pkcs11.Mechanism, blob []byte, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if t.noValueLen {
		tmpl = without(tmpl, pkcs11.CKA_VALUE_LEN)
	}
	h, err := t.dst.api.UnwrapKey(sh, mech, t.unwraper, blob, tmpl)
	var p pkcs11.Error
	if err != nil && errors.As(err, &p) && (p == pkcs11.CKR_ATTRIBUTE_READ_ONLY || p == pkcs11.CKR_TEMPLATE_INCONSISTENT) {
		if short := without(tmpl, pkcs11.CKA_VALUE_LEN); len(short) < len(tmpl) {
			if h, err = t.dst.api.UnwrapKey(sh, mech, t.unwraper, blob, short); err == nil {
				t.noValueLen = true
			}
		}
	}
	return h, err
}

func without(tmpl []*pkcs11.Attribute, t uint) []*pkcs11.Attribute {
	var out []*pkcs11.Attribute
	for _, a := range tmpl {
		if a.Type != t {
			out = append(out, a)
		}
	}
	return out
}

func (t *transport) fail(r *CopyResult, err error) {
	r.Status, r.Err = schemas.StatusFailed, err
}

// copySecret moves one secret key and checks it arrived intact.
func (t *transport) copySecret(r *CopyResult, opts CopyOptions) {
	e := r.Key
	r.Target = t.dst.keyURI(e.Label, e.RawID(), "secret-key")
	method, want, err := t.src.secretKCV(e.obj, e.keyType, e.usage)
	if err != nil {
		t.fail(r, fmt.Errorf("key %q on source token %q: %w; not copied (give the key CKA_ENCRYPT or CKA_SIGN, or copy it with the HSM vendor's tools)", e.Label, t.src.Label(), err))
		return
	}
	r.CheckValue = want
	if done := t.clash(r, pkcs11.CKO_SECRET_KEY, func(h pkcs11.ObjectHandle) (bool, string) {
		got, err := t.dst.kcvWith(h, method)
		if err != nil {
			return false, "check value unavailable: " + err.Error()
		}
		return got == want, got
	}); done {
		return
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, e.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, opts.Extractable),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, e.Label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, e.RawID()),
	}
	for _, u := range usageNames {
		tmpl = append(tmpl, pkcs11.NewAttribute(u.attr, e.usage[u.attr]))
	}
	if e.Bits > 0 {
		// Some tokens show the size of an unwrapped key only when the
		// template gives it; others refuse it (see unwrap).
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, e.Bits/8))
	}
	_, err = t.move(e.obj, e.Label, tmpl, func(h pkcs11.ObjectHandle) error {
		got, err := t.dst.kcvWith(h, method)
		if err == nil && got != want {
			err = fmt.Errorf("check value on the target is %s, on the source %s", got, want)
		}
		return err
	})
	if err != nil {
		t.fail(r, err)
		return
	}
	r.Status = schemas.StatusMigrated
}

// clash looks for objects of class with the key's label on the target. It
// reports true when it decided the result: skipped when one of them is the
// same key (same), failed when none is.
func (t *transport) clash(r *CopyResult, class uint, same func(pkcs11.ObjectHandle) (bool, string)) bool {
	hs, err := t.dst.find(class, r.Key.Label, nil, true)
	if err != nil {
		t.fail(r, err)
		return true
	}
	if len(hs) == 0 {
		return false
	}
	var seen []string
	for _, h := range hs {
		ok, got := same(h)
		if ok {
			r.Status, r.Note = schemas.StatusSkipped, "already on the target with the same check value"
			return true
		}
		seen = append(seen, got)
	}
	t.fail(r, fmt.Errorf("label clash: target token %q already holds %d object(s) labelled %q with another check value (target %s, source %s); not overwritten: rename or delete the target object, or copy into another token",
		t.dst.Label(), len(hs), r.Key.Label, strings.Join(seen, ", "), r.CheckValue))
	return true
}

// copyPrivate moves one private key (and recreates its public key object)
// and proves the target holds the same key.
func (t *transport) copyPrivate(r *CopyResult, opts CopyOptions) {
	e := r.Key
	r.Target = t.dst.keyURI(e.Label, e.RawID(), "private")
	if t.kind != TransportAESKWP {
		t.fail(r, fmt.Errorf("key pair %q: private keys travel only under the aes-kwp transport (RSA-OAEP cannot hold them); both tokens must offer AES-KEY-WRAP-PAD (run with --transport aes-kwp to see what is missing)", e.Label))
		return
	}
	pub, err := t.src.publicKey(&e)
	if err != nil {
		t.fail(r, fmt.Errorf("key pair %q on source token %q: %w; not copied", e.Label, t.src.Label(), err))
		return
	}
	fp, err := Fingerprint(pub)
	if err != nil {
		t.fail(r, fmt.Errorf("key pair %q: %w", e.Label, err))
		return
	}
	r.CheckValue = "spki-sha256:" + strings.TrimPrefix(fp, "sha256:")
	if err := t.src.proveHolds(e.obj, e.usage, pub); err != nil {
		t.fail(r, fmt.Errorf("key pair %q on source token %q: cannot prove the private key matches its public key: %w; not copied", e.Label, t.src.Label(), err))
		return
	}
	if done := t.clash(r, pkcs11.CKO_PRIVATE_KEY, func(h pkcs11.ObjectHandle) (bool, string) {
		u := map[uint]bool{}
		for _, a := range []uint{pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT} {
			u[a], _ = t.dst.boolAttr(h, a)
		}
		if err := t.dst.proveHolds(h, u, pub); err != nil {
			return false, "another key"
		}
		return true, r.CheckValue
	}); done {
		return
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, e.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, opts.Extractable),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, e.Label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, e.RawID()),
	}
	for _, a := range []uint{pkcs11.CKA_SIGN, pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE} {
		tmpl = append(tmpl, pkcs11.NewAttribute(a, e.usage[a]))
	}
	_, err = t.move(e.obj, e.Label, tmpl, func(h pkcs11.ObjectHandle) error {
		if err := t.dst.proveHolds(h, e.usage, pub); err != nil {
			return fmt.Errorf("it does not match the source public key: %w", err)
		}
		return nil
	})
	if err != nil {
		t.fail(r, err)
		return
	}
	if err := t.copyPublic(&e); err != nil {
		// The private key is there and proven; the public object is a
		// convenience that export-public can replace.
		r.Note = "public key object not created on the target: " + err.Error()
	}
	r.Status = schemas.StatusMigrated
}

// copyPublic creates the public key object of a moved pair on the target,
// unless one with the same label and id is there.
func (t *transport) copyPublic(e *KeyEntry) error {
	if hs, err := t.dst.find(pkcs11.CKO_PUBLIC_KEY, e.Label, e.RawID(), true); err != nil || len(hs) > 0 {
		return err
	}
	src := e.pub
	if src == 0 {
		src = e.obj // an RSA private key carries its modulus and exponent
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, e.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, e.Label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, e.RawID()),
	}
	pubUsage := e.pubUsage
	if pubUsage == nil {
		pubUsage = map[uint]bool{pkcs11.CKA_VERIFY: e.usage[pkcs11.CKA_SIGN], pkcs11.CKA_ENCRYPT: e.usage[pkcs11.CKA_DECRYPT], pkcs11.CKA_WRAP: e.usage[pkcs11.CKA_UNWRAP]}
	}
	for _, a := range []uint{pkcs11.CKA_VERIFY, pkcs11.CKA_ENCRYPT, pkcs11.CKA_WRAP} {
		tmpl = append(tmpl, pkcs11.NewAttribute(a, pubUsage[a]))
	}
	var parts []uint
	switch e.keyType {
	case pkcs11.CKK_RSA:
		parts = []uint{pkcs11.CKA_MODULUS, pkcs11.CKA_PUBLIC_EXPONENT}
	default:
		if e.pub == 0 {
			return fmt.Errorf("no public key object on the source to copy")
		}
		parts = []uint{pkcs11.CKA_EC_PARAMS, pkcs11.CKA_EC_POINT}
	}
	for _, a := range parts {
		v, ok, err := t.src.attr(src, a)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("source shows no attribute 0x%x of the public key", a)
		}
		tmpl = append(tmpl, pkcs11.NewAttribute(a, v))
	}
	sh, err := t.dst.session()
	if err != nil {
		return err
	}
	_, err = t.dst.api.CreateObject(sh, tmpl)
	return hsmio.Classify(err, fmt.Sprintf("create public key %q on target token %q", e.Label, t.dst.Label()))
}

// Key check values. The message is fixed so that both HSMs compute the same
// value; only 8 bytes of the result are kept, enough to tell two keys apart
// and too little to serve as a known plaintext/ciphertext pair.
const kcvMessage = "rekey key check value, format 1."

type kcvMethod struct {
	name string
	mech uint // 0: the CKA_CHECK_VALUE attribute
	sign bool
	wrap bool
	blk  int // cipher block for encrypt methods
}

// kcvFixedKey is a public constant: the AES key that the "aes-kw" check
// wraps (RFC 3394 is deterministic) with the key being checked.
var kcvFixedKey = []byte("rekey-kcv-key-01")

func secretKCVMethods(keyType uint, usage map[uint]bool) []kcvMethod {
	var ms []kcvMethod
	switch keyType {
	case pkcs11.CKK_AES:
		if usage[pkcs11.CKA_ENCRYPT] {
			ms = append(ms, kcvMethod{name: "aes-ecb", mech: pkcs11.CKM_AES_ECB, blk: 16})
		}
		if usage[pkcs11.CKA_SIGN] {
			ms = append(ms, kcvMethod{name: "aes-cmac", mech: pkcs11.CKM_AES_CMAC, sign: true})
		}
		if usage[pkcs11.CKA_WRAP] {
			ms = append(ms, kcvMethod{name: "aes-kw", mech: pkcs11.CKM_AES_KEY_WRAP, wrap: true})
		}
	case pkcs11.CKK_DES3, pkcs11.CKK_DES2:
		if usage[pkcs11.CKA_ENCRYPT] {
			ms = append(ms, kcvMethod{name: "des3-ecb", mech: pkcs11.CKM_DES3_ECB, blk: 8})
		}
	default:
		if usage[pkcs11.CKA_SIGN] {
			ms = append(ms, kcvMethod{name: "hmac-sha256", mech: pkcs11.CKM_SHA256_HMAC, sign: true}, kcvMethod{name: "hmac-sha1", mech: pkcs11.CKM_SHA_1_HMAC, sign: true})
		}
	}
	return append(ms, kcvMethod{name: "check-value"})
}

// secretKCV computes the check value of a secret key by the first method the
// key and token allow, and returns the method for the other side.
func (k *KeyToken) secretKCV(h pkcs11.ObjectHandle, keyType uint, usage map[uint]bool) (kcvMethod, string, error) {
	var why []string
	for _, m := range secretKCVMethods(keyType, usage) {
		v, err := k.kcvWith(h, m)
		if err == nil {
			return m, v, nil
		}
		why = append(why, m.name+": "+err.Error())
	}
	return kcvMethod{}, "", fmt.Errorf("no key check value can be computed inside the HSM (%s)", strings.Join(why, "; "))
}

func (k *KeyToken) kcvWith(h pkcs11.ObjectHandle, m kcvMethod) (string, error) {
	if m.name == "" {
		return "", errors.New("no check value method")
	}
	sh, err := k.session()
	if err != nil {
		return "", err
	}
	var out []byte
	switch {
	case m.mech == 0:
		v, ok, err := k.attr(h, pkcs11.CKA_CHECK_VALUE)
		if err != nil {
			return "", err
		}
		if !ok || len(v) == 0 {
			return "", errors.New("the token computes no CKA_CHECK_VALUE for this key (SoftHSM computes none for unwrapped keys; give the key CKA_ENCRYPT, CKA_SIGN or CKA_WRAP so rekey can check it)")
		}
		return m.name + ":" + hex.EncodeToString(v), nil
	case m.wrap:
		fixed, err := k.api.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, "rekey-kcv"),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, kcvFixedKey),
		})
		if err != nil {
			return "", err
		}
		out, err = k.api.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.mech, nil)}, h, fixed)
		_ = k.api.DestroyObject(sh, fixed)
		if err != nil {
			return "", err
		}
	case m.sign:
		if err := k.api.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.mech, nil)}, h); err != nil {
			return "", err
		}
		if out, err = k.api.Sign(sh, []byte(kcvMessage)); err != nil {
			return "", err
		}
	default:
		if err := k.api.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(m.mech, nil)}, h); err != nil {
			return "", err
		}
		if out, err = k.api.Encrypt(sh, make([]byte, m.blk)); err != nil {
			return "", err
		}
	}
	if len(out) < 8 {
		return "", fmt.Errorf("%s gave %d bytes", m.name, len(out))
	}
	return m.name + ":" + hex.EncodeToString(out[:8]), nil
}

// proveHolds shows, inside the HSM, that private key h belongs to pub: it
// signs a fixed message (checked here against pub) or decrypts a random
// challenge encrypted here to pub.
func (k *KeyToken) proveHolds(h pkcs11.ObjectHandle, usage map[uint]bool, pub crypto.PublicKey) error {
	sh, err := k.session()
	if err != nil {
		return err
	}
	digest := sha256.Sum256([]byte(kcvMessage))
	if usage[pkcs11.CKA_SIGN] {
		switch p := pub.(type) {
		case *rsa.PublicKey:
			if err := k.api.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS, nil)}, h); err != nil {
				return err
			}
			sig, err := k.api.Sign(sh, []byte(kcvMessage))
			if err != nil {
				return err
			}
			return rsa.VerifyPKCS1v15(p, crypto.SHA256, digest[:], sig)
		case *ecdsa.PublicKey:
			if err := k.api.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, h); err != nil {
				return err
			}
			sig, err := k.api.Sign(sh, digest[:])
			if err != nil {
				return err
			}
			if len(sig)%2 != 0 {
				return fmt.Errorf("ECDSA signature of %d bytes", len(sig))
			}
			r := new(big.Int).SetBytes(sig[:len(sig)/2])
			s := new(big.Int).SetBytes(sig[len(sig)/2:])
			if !ecdsa.Verify(p, digest[:], r, s) {
				return errors.New("signature made by the private key does not verify with the public key")
			}
			return nil
		case ed25519.PublicKey:
			if err := k.api.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(0x1057 /* CKM_EDDSA */, nil)}, h); err != nil {
				return err
			}
			sig, err := k.api.Sign(sh, []byte(kcvMessage))
			if err != nil {
				return err
			}
			if !ed25519.Verify(p, []byte(kcvMessage), sig) {
				return errors.New("signature made by the private key does not verify with the public key")
			}
			return nil
		}
	}
	if p, ok := pub.(*rsa.PublicKey); ok && usage[pkcs11.CKA_DECRYPT] {
		challenge := make([]byte, 32)
		if _, err := rand.Read(challenge); err != nil {
			return err
		}
		var last error
		for _, hsh := range []struct {
			mech uint
			h    func() hash.Hash
		}{{pkcs11.CKM_SHA256, sha256.New}, {pkcs11.CKM_SHA_1, sha1.New}} {
			ct, err := rsa.EncryptOAEP(hsh.h(), rand.Reader, p, challenge, nil)
			if err != nil {
				return err
			}
			if last = k.api.DecryptInit(sh, oaep(hsh.mech), h); last != nil {
				continue
			}
			got, err := k.api.Decrypt(sh, ct)
			if err != nil {
				last = err
				continue
			}
			if !bytes.Equal(got, challenge) {
				return errors.New("the private key decrypts a challenge to something else: it is not the public key's pair")
			}
			return nil
		}
		return last
	}
	return errors.New("the private key may neither sign nor decrypt, so it cannot be tested")
}

// publicKey reads the public key of an entry (a pair, a lone public key, or
// an RSA private key, which carries its modulus and exponent).
func (k *KeyToken) publicKey(e *KeyEntry) (crypto.PublicKey, error) {
	if e.Kind == KindCertificate {
		c, err := k.certificate(e)
		if err != nil {
			return nil, err
		}
		return c.PublicKey, nil
	}
	h := e.pub
	if h == 0 {
		h = e.obj
	}
	switch e.keyType {
	case pkcs11.CKK_RSA:
		n, ok1, err := k.attr(h, pkcs11.CKA_MODULUS)
		if err != nil {
			return nil, err
		}
		x, ok2, err := k.attr(h, pkcs11.CKA_PUBLIC_EXPONENT)
		if err != nil {
			return nil, err
		}
		if !ok1 || !ok2 || len(x) > 8 {
			return nil, errors.New("modulus or public exponent not readable")
		}
		ex := new(big.Int).SetBytes(x)
		if !ex.IsInt64() || ex.Int64() < 3 || ex.Int64() > 1<<31-1 {
			return nil, fmt.Errorf("unsupported RSA public exponent %v", ex)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(ex.Int64())}, nil
	case pkcs11.CKK_EC, 0x40:
		if e.pub == 0 && e.Kind != KindPublic {
			return nil, errors.New("no public key object with the same id on the token (an EC private key does not carry its public point)")
		}
		pt, ok, err := k.attr(h, pkcs11.CKA_EC_POINT)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, errors.New("CKA_EC_POINT not readable")
		}
		// CKA_EC_POINT is a DER OCTET STRING; some tokens give it raw.
		var inner []byte
		if rest, err := asn1.Unmarshal(pt, &inner); err == nil && len(rest) == 0 {
			pt = inner
		}
		switch e.Curve {
		case "P-224", "P-256", "P-384", "P-521":
			c := map[string]elliptic.Curve{"P-224": elliptic.P224(), "P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}[e.Curve]
			return ecdsa.ParseUncompressedPublicKey(c, pt)
		case "Ed25519":
			if len(pt) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("Ed25519 point of %d bytes", len(pt))
			}
			return ed25519.PublicKey(pt), nil
		}
		return nil, fmt.Errorf("curve %s is not supported for export", e.Curve)
	}
	return nil, fmt.Errorf("key type %s has no exportable public key here", e.Type)
}

// certificate reads a certificate object.
func (k *KeyToken) certificate(e *KeyEntry) (*x509.Certificate, error) {
	if e.Kind != KindCertificate {
		return nil, errors.New("not a certificate")
	}
	// Certificates are public: their CKA_VALUE is the DER certificate, the
	// only CKA_VALUE this code reads. Check the class first so a handle
	// mix-up can never read a key's value.
	c, ok, err := k.ulongAttr(e.obj, pkcs11.CKA_CLASS)
	if err != nil {
		return nil, err
	}
	if !ok || c != pkcs11.CKO_CERTIFICATE {
		return nil, errors.New("object is not a certificate")
	}
	der, ok, err := k.rawAttr(e.obj, pkcs11.CKA_VALUE)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("certificate value not readable")
	}
	return x509.ParseCertificate(der)
}

// Fingerprint is "sha256:" and the hex SHA-256 of the key's DER
// SubjectPublicKeyInfo: what `openssl pkey -pubin -outform DER | sha256sum`
// prints for the exported PEM.
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(s[:]), nil
}
