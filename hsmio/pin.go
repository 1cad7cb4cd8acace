package hsmio

import (
	"fmt"
	"os"
	"strings"

	"rekey/providers/keys"
)

// Secret holds a PIN. It prints as *** in every format.
type Secret struct{ v string }

func (Secret) String() string   { return "***" }
func (Secret) GoString() string { return "***" }

// Value is the PIN itself, for the PKCS#11 login call only.
func (s Secret) Value() string { return s.v }

// ResolvePIN reads the PIN named by a pin-source: "env:VAR", "file:/path" or
// a bare path. The PIN's value never appears in the error.
func ResolvePIN(src string) (Secret, error) {
	switch {
	case src == "":
		return Secret{}, fmt.Errorf("%w: no pin-source in the key URI (add ?pin-source=env:REKEY_SOURCE_PIN or ?pin-source=file:/path/to/pin)", keys.ErrAuthFailed)
	case strings.HasPrefix(src, "env:"):
		name := strings.TrimPrefix(src, "env:")
		v, ok := os.LookupEnv(name)
		if !ok || v == "" {
			return Secret{}, fmt.Errorf("%w: pin-source %s: environment variable %s is not set", keys.ErrAuthFailed, src, name)
		}
		return Secret{v}, nil
	default:
		path := strings.TrimPrefix(src, "file:")
		path = strings.TrimPrefix(path, "//")
		b, err := os.ReadFile(path)
		if err != nil {
			return Secret{}, fmt.Errorf("%w: pin-source %s: %v", keys.ErrAuthFailed, src, err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return Secret{}, fmt.Errorf("%w: pin-source %s: file is empty", keys.ErrAuthFailed, src)
		}
		return Secret{v}, nil
	}
}
