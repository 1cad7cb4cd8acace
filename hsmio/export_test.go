package hsmio

import (
	"context"

	"github.com/ThalesGroup/crypto11"
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
	// Read through crypto11 from the key its AES-GCM uses.
	Label                         string
	Token, Sensitive, Extractable bool
	// With Copy: the handle the raw calls (aes-kwp, rewrap) use, and the
	// session the copy lives on.
	Handle pkcs11.ObjectHandle
	Holder pkcs11.SessionHandle
}

// InspectKey reports the object k's operations use now.
func InspectKey(ctx context.Context, k *KEK) (KeyObject, error) {
	var ko KeyObject
	err := k.withObjs(ctx, func(o *c11Key) error {
		a, err := o.gen.c11.GetAttributes(o.aes, []crypto11.AttributeType{crypto11.CkaToken, crypto11.CkaSensitive, crypto11.CkaExtractable, crypto11.CkaLabel})
		if err != nil {
			return err
		}
		b := func(t crypto11.AttributeType) bool {
			v := a[t]
			return v != nil && len(v.Value) > 0 && v.Value[0] != 0
		}
		ko = KeyObject{Token: b(crypto11.CkaToken), Sensitive: b(crypto11.CkaSensitive), Extractable: b(crypto11.CkaExtractable)}
		if l := a[crypto11.CkaLabel]; l != nil {
			ko.Label = string(l.Value)
		}
		if o.copy != nil {
			ko.Copy, ko.Handle, ko.Holder = true, o.copy.h, o.copy.holder.sh
		}
		return nil
	})
	if err == nil && ko.Copy {
		// The raw calls' handle must be the same copy.
		h, cp, herr := k.aesHandle(0)
		if herr != nil || cp == nil || h != ko.Handle {
			ko.Handle = 0
		}
	}
	return ko, err
}
