package hsmio

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"rekey/providers/keys"
)

// classified marks an error classify made, so that an outer classify only
// adds its context (and never a second hint or sentinel).
type classified struct{ error }

func (c classified) Unwrap() error { return c.error }

// classify maps a PKCS#11 failure onto the keys sentinels and marks
// transient ones retryable. what names the operation and key.
func classify(err error, what string) error {
	if err == nil {
		return nil
	}
	var c classified
	if errors.As(err, &c) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return classified{classifyNew(err, what)}
}

func classifyNew(err error, what string) error {
	if keys.IsRetryable(err) {
		return keys.Retryable(fmt.Errorf("%s: %w", what, err))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return keys.Retryable(fmt.Errorf("%s: %w (the HSM is busy; lower --workers or --hsm-rate)", what, err))
	}
	var p pkcs11.Error
	if !errors.As(err, &p) {
		// crypto11 flattens PKCS#11 errors with %v; recover the code.
		code, ok := codeFromText(err.Error())
		if !ok {
			return fmt.Errorf("%s: %w", what, err)
		}
		p = code
	}
	// Retryable errors say what they are; the retry layer (keys.WithRetry,
	// the preflight's) says how often it tried.
	switch p {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return keys.Retryable(fmt.Errorf("%s: %w (the HSM lost the session: transient HSM error)", what, err))
	case pkcs11.CKR_SESSION_COUNT:
		return keys.Retryable(fmt.Errorf("%s: %w (the token has no free session: transient HSM error; lower --workers if it persists)", what, err))
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_HOST_MEMORY, pkcs11.CKR_FUNCTION_FAILED,
		pkcs11.CKR_OPERATION_ACTIVE:
		return keys.Retryable(fmt.Errorf("%s: %w (transient HSM error)", what, err))
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		return fmt.Errorf("%s: %w: %v (check the PIN behind pin-source)", what, keys.ErrAuthFailed, err)
	case pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED:
		return fmt.Errorf("%s: %w: %v (the token's security officer must reset the PIN)", what, keys.ErrAuthFailed, err)
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return fmt.Errorf("%s: %w: %v", what, keys.ErrAuthFailed, err)
	case pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID:
		return fmt.Errorf("%s: %w: %v (is the key label right?)", what, keys.ErrKeyNotFound, err)
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID:
		return fmt.Errorf("%s: %w: %v (the token does not offer this mechanism or these parameters; pick another wrap)", what, keys.ErrMechanism, err)
	case pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_UNEXTRACTABLE,
		pkcs11.CKR_KEY_NOT_WRAPPABLE:
		return fmt.Errorf("%s: %w: %v (check the key's CKA_ENCRYPT/DECRYPT/WRAP/UNWRAP attributes)", what, keys.ErrNotPermitted, err)
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_WRAPPED_KEY_INVALID,
		pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE:
		return fmt.Errorf("%s: %w: %v", what, keys.ErrUnwrapFailed, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// codeFromText finds a CKR_* name in a flattened error message.
func codeFromText(msg string) (pkcs11.Error, bool) {
	i := strings.Index(msg, "CKR_")
	if i < 0 {
		return 0, false
	}
	j := i
	for j < len(msg) && (msg[j] == '_' || msg[j] >= 'A' && msg[j] <= 'Z' || msg[j] >= '0' && msg[j] <= '9') {
		j++
	}
	name := msg[i:j]
	for code, n := range ckrNames {
		if n == name {
			return code, true
		}
	}
	return 0, false
}

var ckrNames = func() map[pkcs11.Error]string {
	m := map[pkcs11.Error]string{}
	for _, c := range []uint{pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_ERROR,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_ARGUMENTS_BAD,
		pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_HOST_MEMORY, pkcs11.CKR_SESSION_COUNT, pkcs11.CKR_FUNCTION_FAILED,
		pkcs11.CKR_OPERATION_ACTIVE, pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_KEY_HANDLE_INVALID,
		pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID,
		pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID,
		pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_UNEXTRACTABLE,
		pkcs11.CKR_KEY_NOT_WRAPPABLE, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_GENERAL_ERROR,
		pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE} {
		e := pkcs11.Error(c)
		name := e.Error()
		if k := strings.Index(name, "CKR_"); k >= 0 {
			name = name[k:]
		}
		m[e] = name
	}
	return m
}()
