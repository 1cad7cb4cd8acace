package alikms

import (
	"errors"
	"fmt"

	"rekey/schemas"
)

// The KMS instance API's Encrypt returns a ciphertext and the IV it chose,
// and Decrypt needs both. rekey stores them as one wrapped key:
//
//	byte 0       version, 1: AES_GCM
//	byte 1       n, the IV's length: 12 for AES_GCM
//	bytes 2..2+n the Iv of Encrypt's answer
//	the rest     its CiphertextBlob, as returned (1 byte at least)
//
// at most schemas.MaxWrappedDEK bytes in all.
const (
	blobV1     = 1
	gcmIVSize  = 12
	blobHeader = 2
)

var errBlob = errors.New("not an alikms-instance wrapped key")

// frame joins Encrypt's IV and ciphertext.
func frame(iv, ct []byte) ([]byte, error) {
	if len(iv) != gcmIVSize || len(ct) == 0 || blobHeader+len(iv)+len(ct) > schemas.MaxWrappedDEK {
		return nil, fmt.Errorf("%w: Encrypt answered a %d-byte Iv and a %d-byte CiphertextBlob (want %d and 1 to %d)",
			errBlob, len(iv), len(ct), gcmIVSize, schemas.MaxWrappedDEK-blobHeader-gcmIVSize)
	}
	b := make([]byte, 0, blobHeader+len(iv)+len(ct))
	b = append(b, blobV1, byte(len(iv)))
	b = append(b, iv...)
	return append(b, ct...), nil
}

// unframe splits a wrapped key into IV and ciphertext; both alias w.
func unframe(w []byte) (iv, ct []byte, err error) {
	switch {
	case len(w) > schemas.MaxWrappedDEK:
		return nil, nil, fmt.Errorf("%w: %d bytes, more than %d", errBlob, len(w), schemas.MaxWrappedDEK)
	case len(w) < blobHeader:
		return nil, nil, fmt.Errorf("%w: %d bytes", errBlob, len(w))
	case w[0] != blobV1:
		return nil, nil, fmt.Errorf("%w: version %d (this rekey reads %d)", errBlob, w[0], blobV1)
	case int(w[1]) != gcmIVSize:
		return nil, nil, fmt.Errorf("%w: a %d-byte IV (AES_GCM takes %d)", errBlob, w[1], gcmIVSize)
	case len(w) <= blobHeader+gcmIVSize:
		return nil, nil, fmt.Errorf("%w: %d bytes leave no ciphertext", errBlob, len(w))
	}
	return w[blobHeader : blobHeader+gcmIVSize], w[blobHeader+gcmIVSize:], nil
}
