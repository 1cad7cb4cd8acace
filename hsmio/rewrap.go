package hsmio

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"rekey/providers/keys"
	"rekey/schemas"
)

// Custodian-side rewrap on one token (keys.Rewrapper): a key wrapped with
// aes-kwp under one AES key of a token is unwrapped into a session object
// that is sensitive (its value cannot be read out), wrapped under another
// AES key of the same token, and checked there, so the DEK never enters
// this process:
//
//  1. C_UnwrapKey (CKM_AES_KEY_WRAP_PAD) with the source key into a session
//     object: CKK_GENERIC_SECRET, CKA_SENSITIVE, CKA_EXTRACTABLE (C_WrapKey
//     needs it; a sensitive key is still only ever exported wrapped), CKA_SIGN.
//  2. C_Sign (CKM_SHA256_HMAC) of schemas.KCVMessage: the key's KCV, checked
//     against the DEK table's when it has one (the proof that the token
//     unwrapped the right key).
//  3. C_WrapKey (CKM_AES_KEY_WRAP_PAD) with the target key.
//  4. C_UnwrapKey of the new wrap with the target key and C_Sign again: the
//     same KCV shows the new wrap holds the same key (verify before commit).
//
// Five token calls instead of the three of an unwrap and wrap through rekey
// (whose KCV and compare run in software): the price of keeping the DEK in
// the token. Keys that step 2 cannot sign with (SoftHSM's HMAC-SHA256 wants
// 32 bytes or more) and other mechanisms go the client way (keys.ErrNoRewrap).

var _ keys.Rewrapper = (*KEK)(nil)

// CanRewrapTo implements keys.Rewrapper: aes-kwp to aes-kwp between two AES
// keys of the same token.
func (k *KEK) CanRewrapTo(dst keys.KEK, srcMech string) bool {
	d, ok := dst.(*KEK)
	return ok && d.tok == k.tok && k.isAES && d.isAES && !k.noRewrap.Load() &&
		srcMech == schemas.WrapAESKWP && d.mech == schemas.WrapAESKWP
}

// unsupported reports token answers that say it cannot do this rewrap
// (no HMAC, no generic secrets, a key too short to sign with), as opposed
// to a bad wrapped key or an unusable KEK.
func unsupported(err error) bool {
	var p pkcs11.Error
	if !errors.As(err, &p) {
		return false
	}
	switch p {
	case pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_MECHANISM_INVALID,
		pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_TEMPLATE_INCOMPLETE, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID,
		pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED:
		return true
	}
	return false
}

// minHMACKey is the shortest key SoftHSM2 signs with under CKM_SHA256_HMAC.
const minHMACKey = 32

// Rewrap implements keys.Rewrapper.
func (k *KEK) Rewrap(ctx context.Context, r keys.RewrapRequest) (keys.RewrapResult, error) {
	d, ok := r.Dst.(*KEK)
	if !ok || !k.CanRewrapTo(d, r.SrcMech) {
		return keys.RewrapResult{}, fmt.Errorf("%w: %s (%s) to %s", keys.ErrNoRewrap, k.URI(), r.SrcMech, r.Dst.URI())
	}
	what := fmt.Sprintf("rewrap DEK (%s) inside token %q from %s to %s", r.Src, k.uri.Token, k.URI(), d.URI())
	w := r.Wrapped
	if len(w) < 8+keys.MinSecret || len(w)%8 != 0 || len(w) > schemas.MaxWrappedDEK {
		return keys.RewrapResult{}, fmt.Errorf("%s: %w: an aes-kwp wrapped key is a multiple of 8 bytes and at least %d; this one is %d", what, keys.ErrUnwrapFailed, 8+keys.MinSecret, len(w))
	}
	if len(w)-8 < minHMACKey {
		return keys.RewrapResult{}, fmt.Errorf("%s: %w: a %d-byte key cannot be checked inside the token", what, keys.ErrNoRewrap, len(w)-8)
	}
	var res keys.RewrapResult
	// A key handle the token no longer knows (a session copy whose
	// holder was lost) is copied or looked up again, and the rewrap runs
	// again.
	err := k.tok.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		for try := 0; ; try++ {
			src, scp, err := k.aesHandle(sh)
			if err != nil {
				return err
			}
			dst, dcp, err := d.aesHandle(sh)
			if err != nil {
				return err
			}
			res = keys.RewrapResult{}
			err = k.rewrapOn(sh, d, src, dst, r, &res)
			if !copyGone(err, scp != nil || dcp != nil) || try == maxReplace {
				return err
			}
			again := k.handleLost(src, scp, err)
			if d.handleLost(dst, dcp, err) {
				again = true
			}
			if !again {
				return err
			}
		}
	})
	if err != nil {
		if errors.Is(err, schemas.ErrKCVMismatch) {
			return keys.RewrapResult{}, fmt.Errorf("%s: %w", what, err)
		}
		if unsupported(err) {
			// Every later key would fail the same way: this token does
			// not rewrap inside; rewrap goes through rekey from now on.
			k.noRewrap.Store(true)
			return keys.RewrapResult{}, fmt.Errorf("%s: %w: %v", what, keys.ErrNoRewrap, err)
		}
		return keys.RewrapResult{}, classify(err, what)
	}
	return res, nil
}

// rewrapOn makes the five token calls of one rewrap on session sh, with
// the keys' handles src and dst.
func (k *KEK) rewrapOn(sh pkcs11.SessionHandle, d *KEK, src, dst pkcs11.ObjectHandle, r keys.RewrapRequest, res *keys.RewrapResult) error {
	w := r.Wrapped
	p11 := k.tok.p11
	kwp := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	unwrap := func(kek pkcs11.ObjectHandle, blob []byte, extractable bool) (pkcs11.ObjectHandle, error) {
		return p11.UnwrapKey(sh, kwp, kek, blob, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		})
	}
	kcv := func(obj pkcs11.ObjectHandle) ([]byte, error) {
		if err := p11.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, obj); err != nil {
			return nil, err
		}
		mac, err := p11.Sign(sh, schemas.KCVMessage(r.Src.DEKID))
		if err != nil {
			return nil, err
		}
		if len(mac) < schemas.KCVSize {
			return nil, fmt.Errorf("the token's HMAC-SHA256 is %d bytes", len(mac))
		}
		return mac[:schemas.KCVSize], nil
	}
	obj, err := unwrap(src, w, true)
	if err != nil {
		return err
	}
	defer func() { _ = p11.DestroyObject(sh, obj) }()
	if res.KCV, err = kcv(obj); err != nil {
		return err
	}
	if len(r.KCV) > 0 {
		res.Proof = schemas.ProofKCV
		if subtle.ConstantTimeCompare(res.KCV, r.KCV) != 1 {
			return fmt.Errorf("dek_id %q: the token unwrapped a wrong key: %w (the DEK table's kcv does not match)", r.Src.DEKID, schemas.ErrKCVMismatch)
		}
	}
	if res.Wrapped, err = p11.WrapKey(sh, kwp, dst, obj); err != nil {
		return err
	}
	back, err := unwrap(dst, res.Wrapped, false)
	if err != nil {
		return fmt.Errorf("verify before commit: unwrap the new wrap: %w", err)
	}
	defer func() { _ = p11.DestroyObject(sh, back) }()
	again, err := kcv(back)
	if err != nil {
		return fmt.Errorf("verify before commit: %w", err)
	}
	if subtle.ConstantTimeCompare(again, res.KCV) != 1 {
		return fmt.Errorf("verify before commit: the new wrap holds a different key (%w)", schemas.ErrKCVMismatch)
	}
	res.Verified = true
	return nil
}
