package hsmio

import (
	"fmt"
	"net/url"
	"os"
	"strings"

	"rekey/providers/keys"
)

// URI is a parsed RFC 7512 pkcs11: URI naming a key on a token.
//
// Path attributes used: token, serial, object, id, type. Query attributes:
// module-path (default: $REKEY_PKCS11_MODULE, then SoftHSM2's Debian path)
// and pin-source ("env:VAR" or "file:/path"; a bare path is read as a file).
// pin-value is refused: PINs never go on a command line or in a job file.
type URI struct {
	Token      string
	Serial     string
	Object     string
	ID         []byte
	Type       string // secret-key, private, public
	ModulePath string
	PinSource  string
}

const (
	maxURIBytes  = 4096
	maxAttrBytes = 255 // PKCS#11 token labels are 32 bytes; object labels rarely longer
)

// DefaultModulePath is SoftHSM2's module on Debian.
const DefaultModulePath = "/usr/lib/softhsm/libsofthsm2.so"

// ParseURI parses an RFC 7512 URI. It checks every attribute; unknown path
// attributes are errors so a typo does not silently select another key.
func ParseURI(s string) (URI, error) {
	var u URI
	if len(s) > maxURIBytes {
		return u, fmt.Errorf("%w: pkcs11 URI longer than %d bytes", keys.ErrBadURI, maxURIBytes)
	}
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("%w: %q does not start with pkcs11:", keys.ErrBadURI, redactURI(s))
	}
	path, query, _ := strings.Cut(rest, "?")
	seen := map[string]bool{}
	if path != "" {
		for _, attr := range strings.Split(path, ";") {
			k, v, ok := strings.Cut(attr, "=")
			if !ok || k == "" {
				return u, fmt.Errorf("%w: path attribute %q is not name=value", keys.ErrBadURI, attr)
			}
			if seen[k] {
				return u, fmt.Errorf("%w: attribute %q given twice", keys.ErrBadURI, k)
			}
			seen[k] = true
			dv, err := url.PathUnescape(v)
			if err != nil {
				return u, fmt.Errorf("%w: attribute %q: %v", keys.ErrBadURI, k, err)
			}
			if len(dv) > maxAttrBytes {
				return u, fmt.Errorf("%w: attribute %q longer than %d bytes", keys.ErrBadURI, k, maxAttrBytes)
			}
			switch k {
			case "token":
				u.Token = dv
			case "serial":
				u.Serial = dv
			case "object":
				u.Object = dv
			case "id":
				u.ID = []byte(dv)
			case "type":
				switch dv {
				case "secret-key", "private", "public":
				default:
					return u, fmt.Errorf("%w: type=%q (want secret-key, private or public)", keys.ErrBadURI, dv)
				}
				u.Type = dv
			case "manufacturer", "model", "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer", "slot-id":
				// Accepted for compatibility; tokens are selected by label or serial.
			default:
				return u, fmt.Errorf("%w: unknown path attribute %q", keys.ErrBadURI, k)
			}
		}
	}
	if query != "" {
		for _, attr := range strings.Split(query, "&") {
			k, v, ok := strings.Cut(attr, "=")
			if !ok || k == "" {
				return u, fmt.Errorf("%w: query attribute %q is not name=value", keys.ErrBadURI, k)
			}
			if seen["?"+k] {
				return u, fmt.Errorf("%w: attribute %q given twice", keys.ErrBadURI, k)
			}
			seen["?"+k] = true
			dv, err := url.PathUnescape(v)
			if err != nil {
				return u, fmt.Errorf("%w: attribute %q: %v", keys.ErrBadURI, k, err)
			}
			switch k {
			case "module-path":
				u.ModulePath = dv
			case "pin-source":
				u.PinSource = dv
			case "pin-value":
				return u, fmt.Errorf("%w: pin-value is not accepted (the PIN would end up in job files, shell history and ps); use pin-source=env:VAR or pin-source=file:/path", keys.ErrBadURI)
			case "module-name":
				// Accepted; module-path wins.
			default:
				return u, fmt.Errorf("%w: unknown query attribute %q", keys.ErrBadURI, k)
			}
		}
	}
	if u.Token == "" && u.Serial == "" {
		return u, fmt.Errorf("%w: %q names no token (add token=<label>)", keys.ErrBadURI, redactURI(s))
	}
	if u.Object == "" && len(u.ID) == 0 {
		return u, fmt.Errorf("%w: %q names no key (add object=<label>)", keys.ErrBadURI, redactURI(s))
	}
	if u.ModulePath == "" {
		u.ModulePath = os.Getenv("REKEY_PKCS11_MODULE")
	}
	if u.ModulePath == "" {
		u.ModulePath = DefaultModulePath
	}
	return u, nil
}

// KeyURI is the canonical reference to the key, without module or PIN: what
// the DEK table's kek column stores and what two URIs are compared by.
func (u URI) KeyURI() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+escape(v))
		}
	}
	add("token", u.Token)
	add("serial", u.Serial)
	add("object", u.Object)
	if len(u.ID) > 0 {
		parts = append(parts, "id="+pctAll(u.ID))
	}
	add("type", u.Type)
	return "pkcs11:" + strings.Join(parts, ";")
}

// SameKey reports whether two key references name the same key on the same
// token (module and PIN are ignored; type is ignored when either omits it).
func SameKey(a, b string) bool {
	ua, err1 := ParseURI(a)
	ub, err2 := ParseURI(b)
	if err1 != nil || err2 != nil {
		return false
	}
	if ua.Type != "" && ub.Type != "" && ua.Type != ub.Type {
		return false
	}
	return ua.Token == ub.Token && ua.Serial == ub.Serial && ua.Object == ub.Object && string(ua.ID) == string(ub.ID)
}

func escape(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func pctAll(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, "%%%02X", c)
	}
	return s.String()
}

// redactURI drops the query (module path, pin source) for error messages.
func redactURI(s string) string {
	if len(s) > 256 {
		s = s[:256] + "..."
	}
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i]
	}
	return s
}
