package hsmio

import (
	"context"
	"errors"

	"github.com/miekg/pkcs11"
)

// SetSessionCopies switches session copies on or off for the keys opened
// afterwards, and returns the previous setting.
func SetSessionCopies(on bool) (was bool) { return !noSessionCopies.Swap(!on) }

// CopyLabelPrefix starts the label of every session copy.
const CopyLabelPrefix = copyLabelPrefix

// KeyObject is what a test learns about the object an AES KEK's
// operations use.
type KeyObject struct {
	Copy bool // a session copy, not the token object
	// Read from the object the operations use, on a session of the pool.
	Label                         string
	Token, Sensitive, Extractable bool
	// With Copy: the copy's handle, and the session the copy lives on.
	Handle pkcs11.ObjectHandle
	Holder pkcs11.SessionHandle
}

// InspectKey reports the object k's operations use now.
func InspectKey(ctx context.Context, k *KEK) (KeyObject, error) {
	var ko KeyObject
	err := k.withKey(ctx, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		a, err := k.tok.p11.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err != nil {
			return err
		}
		b := func(i int) bool { return len(a[i].Value) > 0 && a[i].Value[0] != 0 }
		ko = KeyObject{Token: b(0), Sensitive: b(1), Extractable: b(2), Label: string(a[3].Value)}
		if _, cp, err := k.aesHandle(sh); err == nil && cp != nil && cp.h == h {
			ko.Copy, ko.Handle, ko.Holder = true, cp.h, cp.holder.sh
		}
		return nil
	})
	return ko, err
}

// GCMCrossCheck encrypts in under k's AES key through the module's
// function list (gcmcall.go) and through the binding's calls (RawGCM), and
// decrypts each ciphertext through the other path. oneCall reports whether
// the function-list path exists for k's module.
func GCMCrossCheck(ctx context.Context, k *KEK, nonce, aad, in []byte) (oneCall bool, fast, slow []byte, err error) {
	if k.tok.gcm == nil {
		return false, nil, nil, nil
	}
	err = k.withKey(ctx, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		var err error
		if fast, err = k.tok.gcm.call(sh, h, true, nonce, aad, in); err != nil {
			return err
		}
		if slow, err = RawGCM(k.tok.p11, sh, h, true, nonce, aad, in); err != nil {
			return err
		}
		for _, c := range []struct {
			ct  []byte
			raw bool
		}{{fast, true}, {slow, false}} {
			var pt []byte
			if c.raw {
				pt, err = RawGCM(k.tok.p11, sh, h, false, nonce, aad, c.ct)
			} else {
				pt, err = k.tok.gcm.call(sh, h, false, nonce, aad, c.ct)
			}
			if err != nil {
				return err
			}
			if string(pt) != string(in) {
				return errors.New("a ciphertext of one path does not decrypt to the input through the other")
			}
		}
		return nil
	})
	return true, fast, slow, err
}

// GCMOpen decrypts ct under k's AES key through the module's function list.
func GCMOpen(ctx context.Context, k *KEK, nonce, aad, ct []byte) (pt []byte, err error) {
	err = k.withKey(ctx, func(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		pt, err = k.tok.gcm.call(sh, h, false, nonce, aad, ct)
		return err
	})
	return pt, err
}
