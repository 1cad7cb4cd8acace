package alikms

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"rekey/providers/keys"
)

// Secret is a credential read from a *-source reference: an AccessKey
// secret, a ClientKey file or its password. It prints as *** in every
// format; only the SDK configuration reads its value.
type Secret struct{ v string }

func (Secret) String() string             { return "***" }
func (Secret) GoString() string           { return "***" }
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("***")) }

// maxSecretFile caps what a *-source file may hold: ClientKey files are a
// few KB, CA bundles a few dozen.
const maxSecretFile = 1 << 20

// readSource reads the secret named by src ("env:VAR" or "file:/path"),
// for the URI parameter name. The value never appears in an error.
func readSource(name, src string) (Secret, error) {
	if v, ok := strings.CutPrefix(src, "env:"); ok {
		s, set := os.LookupEnv(v)
		if !set || s == "" {
			return Secret{}, fmt.Errorf("%w: %s=%s: environment variable %s is not set", keys.ErrAuthFailed, name, src, v)
		}
		return Secret{s}, nil
	}
	path := strings.TrimPrefix(strings.TrimPrefix(src, "file:"), "//")
	f, err := os.Open(path)
	if err != nil {
		return Secret{}, fmt.Errorf("%w: %s=%s: %v", keys.ErrAuthFailed, name, src, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	defer clear(b)
	n := len(b)
	switch {
	case err != nil:
		return Secret{}, fmt.Errorf("%w: %s=%s: %v", keys.ErrAuthFailed, name, src, err)
	case n > maxSecretFile:
		return Secret{}, fmt.Errorf("%w: %s=%s: file larger than %d bytes", keys.ErrAuthFailed, name, src, maxSecretFile)
	case n == 0:
		return Secret{}, fmt.Errorf("%w: %s=%s: file is empty", keys.ErrAuthFailed, name, src)
	}
	return Secret{strings.TrimRight(string(b[:n]), "\r\n")}, nil
}

// accessKey is an Alibaba Cloud AccessKey pair, optionally with an STS
// token.
type accessKey struct {
	ID     string // not secret: it is sent in every request's Authorization
	Secret Secret
	Token  Secret
}

// readAccessKeyFile reads a credential-source file: a JSON object with
// AccessKeyId, AccessKeySecret and optionally SecurityToken, the shape of
// the "Credentials" member of an STS AssumeRole answer (which is also
// accepted whole).
func readAccessKeyFile(src string) (accessKey, error) {
	raw, err := readSource("credential-source", src)
	if err != nil {
		return accessKey{}, err
	}
	type creds struct{ AccessKeyId, AccessKeySecret, SecurityToken string }
	var doc struct {
		creds
		Credentials *creds
	}
	if err := json.Unmarshal([]byte(raw.v), &doc); err != nil {
		// The decoder's message quotes the input: say only where.
		return accessKey{}, fmt.Errorf("%w: credential-source=%s: not a JSON object {\"AccessKeyId\": ..., \"AccessKeySecret\": ..., \"SecurityToken\": ...}", keys.ErrAuthFailed, src)
	}
	c := doc.creds
	if doc.Credentials != nil {
		c = *doc.Credentials
	}
	if c.AccessKeyId == "" || c.AccessKeySecret == "" {
		return accessKey{}, fmt.Errorf("%w: credential-source=%s: AccessKeyId or AccessKeySecret is missing", keys.ErrAuthFailed, src)
	}
	return accessKey{ID: c.AccessKeyId, Secret: Secret{c.AccessKeySecret}, Token: Secret{c.SecurityToken}}, nil
}
