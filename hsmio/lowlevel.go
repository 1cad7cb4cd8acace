package hsmio

import (
	"context"
	"strings"

	"github.com/miekg/pkcs11"
)

// Low-level access for hsmio's subpackages. hsmio/inventory (rekey keys)
// works on whole tokens: it lists objects, reads their public attributes
// and wraps keys from one token into another, calls that crypto11 does not
// offer. It makes them itself on the raw context of the token hsmio has
// logged in to, so that one login per token serves the whole process.

// RawToken is a logged-in token's raw PKCS#11 context and slot.
type RawToken struct {
	// Ctx is shared with crypto11 and with every KEK on the same module:
	// never call Finalize, Destroy, Login or Logout on it, and close only
	// the sessions you opened.
	Ctx  *pkcs11.Ctx
	Slot uint
}

// OpenRawToken logs in to the token u names, or reuses the process's login
// to it, and returns its raw context. u's object, id and type are ignored.
//
// A token first opened here gets session pools of two: a KEK opened later
// on the same token (same module, token and PIN) in the same process shares
// them, and grows them to what it asks for. The caller's own sessions count
// against the token's session limit like any other. Transient HSM errors
// are retried (keys.RetryPolicy's bounds).
func OpenRawToken(u URI) (RawToken, error) {
	var tok *token
	err := retry(context.Background(), nil, func() (err error) { tok, err = openToken(u, 2); return err })
	if err != nil {
		return RawToken{}, err
	}
	return RawToken{Ctx: tok.p11, Slot: tok.slot}, nil
}

// Classify maps an error of a PKCS#11 call onto the keys sentinels
// (ErrAuthFailed, ErrKeyNotFound, ErrMechanism, ErrNotPermitted,
// ErrUnwrapFailed), marks transient HSM errors retryable, and prefixes what
// (the operation, with the token or key it was made on). A nil err stays
// nil.
func Classify(err error, what string) error { return classify(err, what) }

// ParseTokenURI parses a pkcs11: URI that names a token, and optionally a
// key on it. It is ParseURI without the requirement of an object or id.
func ParseTokenURI(s string) (URI, error) {
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok || len(s) > maxURIBytes {
		return ParseURI(s) // for its error message
	}
	path, query, hasQuery := strings.Cut(rest, "?")
	namesKey := false
	for _, attr := range strings.Split(path, ";") {
		k, _, _ := strings.Cut(attr, "=")
		namesKey = namesKey || k == "object" || k == "id"
	}
	if namesKey {
		return ParseURI(s)
	}
	// A placeholder object satisfies ParseURI, which then checks everything
	// else; NUL cannot appear in a label typed on a command line.
	const placeholder = "%00rekey-any-key"
	if path == "" {
		path = "object=" + placeholder
	} else {
		path += ";object=" + placeholder
	}
	if hasQuery {
		path += "?" + query
	}
	u, err := ParseURI("pkcs11:" + path)
	if err != nil {
		return u, err
	}
	u.Object = ""
	return u, nil
}
