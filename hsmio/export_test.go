package hsmio

import (
	"context"

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
