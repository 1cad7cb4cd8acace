package alikms

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/alibabacloud-go/tea/tea"
	dkmsapi "github.com/aliyun/alibabacloud-dkms-gcs-go-sdk/openapi"
	dkmsutil "github.com/aliyun/alibabacloud-dkms-gcs-go-sdk/openapi-util"
	dkms "github.com/aliyun/alibabacloud-dkms-gcs-go-sdk/sdk"

	"rekey/providers/keys"
	"rekey/schemas"
)

// instanceAlgorithm is the one symmetric algorithm rekey uses on a KMS
// instance.
const instanceAlgorithm = "AES_GCM"

// maxAad is the KMS instance API's limit on Aad.
const maxAad = 8192

// instanceKEK is a symmetric key in a KMS instance, reached through the
// instance API (protobuf over HTTPS, signed with the application access
// point's ClientKey).
type instanceKEK struct {
	ref    ref
	uri    string
	keyID  string // the key ID the probe's answer named (an alias resolved)
	probed bool   // false: the probe's Encrypt was not allowed
	c      *dkms.Client
	rt     *dkmsutil.RuntimeOptions
}

var (
	_ keys.KEK         = (*instanceKEK)(nil)
	_ keys.Generator   = (*instanceKEK)(nil)
	_ keys.Preflighter = (*instanceKEK)(nil)
)

func openInstance(ctx context.Context, uri string, opts keys.Options) (*instanceKEK, error) {
	r, err := parseRef(InstanceScheme, uri)
	if err != nil {
		return nil, err
	}
	k := &instanceKEK{ref: r, uri: r.canonical(), keyID: r.key}
	what := "alikms-instance: open " + k.uri
	if err := guardDebug(what); err != nil {
		return nil, err
	}
	if opts.Wrap != "" && opts.Wrap != InstanceMech {
		return nil, fmt.Errorf("%s: %w: %q (alikms-instance wraps with %s)", what, keys.ErrMechanism, opts.Wrap, InstanceMech)
	}
	cfg, err := instanceConfig(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	cfg.ReadTimeout, cfg.ConnectTimeout = tea.Int(readTimeoutMS), tea.Int(connectTimeoutMS)
	cfg.MaxIdleConns = tea.Int(max(opts.Sessions, 64))
	if k.c, err = dkms.NewClient(cfg); err != nil {
		msg := "the ClientKey does not open"
		if strings.Contains(err.Error(), "password") {
			msg = "the ClientKey does not open with the password from password-source"
		}
		return nil, fmt.Errorf("%s: %w: %s", what, keys.ErrAuthFailed, msg)
	}
	// rekey's keys.WithRetry retries; the SDK retries 3 times by default.
	k.rt = &dkmsutil.RuntimeOptions{Autoretry: tea.Bool(false), MaxAttempts: tea.Int(1)}
	if k.keyID, k.probed, err = k.probe(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

// instanceConfig resolves the ClientKey, its password and the CA.
func instanceConfig(r ref) (*dkmsapi.Config, error) {
	if r.clientKeySource == "" || r.passwordSource == "" {
		return nil, fmt.Errorf("%w: a KMS instance needs ?client-key-source=file:/path/clientKey_....json&password-source=env:VAR (the application access point's ClientKey and its password)", keys.ErrAuthFailed)
	}
	raw, err := readSource("client-key-source", r.clientKeySource)
	if err != nil {
		return nil, err
	}
	// The SDK echoes a malformed ClientKey in its errors: check its shape
	// here and hand it only a clean copy.
	var ck struct{ KeyId, PrivateKeyData string }
	if json.Unmarshal([]byte(raw.v), &ck) != nil || ck.KeyId == "" || ck.PrivateKeyData == "" {
		return nil, fmt.Errorf("%w: client-key-source=%s: not a ClientKey file (JSON with KeyId and PrivateKeyData)", keys.ErrAuthFailed, r.clientKeySource)
	}
	if _, err := base64.StdEncoding.DecodeString(ck.PrivateKeyData); err != nil {
		return nil, fmt.Errorf("%w: client-key-source=%s: PrivateKeyData is not base64", keys.ErrAuthFailed, r.clientKeySource)
	}
	clean, _ := json.Marshal(ck)
	pw, err := readSource("password-source", r.passwordSource)
	if err != nil {
		return nil, err
	}
	cfg := &dkmsapi.Config{
		Endpoint:         tea.String(r.endpoint),
		ClientKeyContent: tea.String(string(clean)),
		Password:         tea.String(pw.v),
	}
	switch {
	case r.caSource != "":
		ca, err := readSource("ca-source", r.caSource)
		if err != nil {
			return nil, err
		}
		if !strings.Contains(ca.v, "-----BEGIN CERTIFICATE-----") {
			return nil, fmt.Errorf("%w: ca-source=%s: no PEM certificate in it", keys.ErrAuthFailed, r.caSource)
		}
		cfg.Ca = tea.String(ca.v)
	case r.insecure:
		cfg.IgnoreSSL = tea.Bool(true)
	}
	// tea keeps one HTTP transport per endpoint and timeouts, built by the
	// first client to use it: the CA and the ClientKey's TLS certificate
	// are not part of that key, so a second trust setup on the same
	// endpoint would silently ride on the first. Socks5NetWork is part of
	// it and unused without a SOCKS5 proxy (none is set): a digest of the
	// trust setup there gives each its own transport.
	trust := sha256.Sum256([]byte(tea.StringValue(cfg.Ca) + "\x00" + ck.KeyId + "\x00" + fmt.Sprint(r.insecure)))
	cfg.Socks5NetWork = tea.String("rekey-" + hex.EncodeToString(trust[:8]))
	return cfg, nil
}

// probe checks credentials and key with an Encrypt of a throwaway value
// (the instance API has no DescribeKey) and returns the key ID the answer
// names (an alias resolved). An application access point that does not
// allow Encrypt (a source key, only unwrapped) leaves the key unchecked:
// ok is false, err nil.
func (k *instanceKEK) probe(ctx context.Context) (id string, ok bool, err error) {
	what := "alikms-instance: open " + k.uri
	req := &dkms.EncryptRequest{KeyId: tea.String(k.ref.key), Plaintext: make([]byte, 16), Algorithm: tea.String(instanceAlgorithm)}
	resp, err := call(ctx, func() (*dkms.EncryptResponse, error) { return k.c.EncryptWithOptions(req, k.rt) })
	if err == nil {
		return cmp.Or(tea.StringValue(resp.KeyId), k.ref.key), true, nil
	}
	err = classify(what, opLookup, err)
	var ae *APIError
	if errors.Is(err, keys.ErrNotPermitted) && errors.As(err, &ae) && ae.Code == "Forbidden.NoPermission" {
		return k.ref.key, false, nil
	}
	return "", false, err
}

// instanceAAD is what a wrap binds, as the Aad of AES_GCM: nothing for an
// unbound key, rekey's dek_id label for a dek_id alone, the
// length-prefixed encoding of the whole binding otherwise; byte for byte
// what the pkcs11 scheme's aes-gcm binds.
func instanceAAD(b keys.Binding) ([]byte, error) {
	var aad []byte
	switch {
	case b.IsZero():
		return nil, nil
	case len(b.Context) == 0 && len(b.AAD) == 0:
		aad = schemas.DEKAAD(b.DEKID)
	default:
		aad = schemas.BindingAAD(b.DEKID, b.Context, b.AAD)
	}
	if len(aad) > maxAad {
		return nil, fmt.Errorf("the binding encodes to %d bytes of Aad; a KMS instance takes %d", len(aad), maxAad)
	}
	return aad, nil
}

func (k *instanceKEK) URI() string       { return k.uri }
func (k *instanceKEK) Mechanism() string { return InstanceMech }
func (k *instanceKEK) String() string    { return k.uri }
func (k *instanceKEK) GoString() string  { return "alikms.InstanceKEK(" + k.uri + ")" }

// Matches reports whether a DEK table's reference names this key, by the
// reference it was opened with or by the key ID an alias resolved to.
func (k *instanceKEK) Matches(ref string) bool {
	if keys.SameKey(ref, k.uri) {
		return true
	}
	id := k.ref
	id.key = k.keyID
	return k.keyID != k.ref.key && keys.SameKey(ref, id.canonical())
}

// Wrap implements keys.KEK with Encrypt (AES_GCM, the binding as Aad).
func (k *instanceKEK) Wrap(ctx context.Context, b keys.Binding, dek *keys.DEK) ([]byte, error) {
	what := fmt.Sprintf("alikms-instance: wrap DEK (%s) with %s", b, k.uri)
	aad, err := instanceAAD(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	req := &dkms.EncryptRequest{KeyId: tea.String(k.keyID), Plaintext: dek.Bytes(), Algorithm: tea.String(instanceAlgorithm), Aad: aad}
	resp, err := call(ctx, func() (*dkms.EncryptResponse, error) { return k.c.EncryptWithOptions(req, k.rt) })
	if err != nil {
		return nil, classify(what, opWrap, err)
	}
	if id := tea.StringValue(resp.KeyId); k.probed && id != "" && id != k.keyID {
		return nil, fmt.Errorf("%s: the instance encrypted under key %q, not %s", what, id, k.keyID)
	}
	if a := tea.StringValue(resp.Algorithm); a != "" && a != instanceAlgorithm {
		return nil, fmt.Errorf("%s: the instance encrypted with %s, not %s", what, a, instanceAlgorithm)
	}
	w, err := frame(resp.Iv, resp.CiphertextBlob)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return w, nil
}

// Unwrap implements keys.KEK with Decrypt.
func (k *instanceKEK) Unwrap(ctx context.Context, b keys.Binding, mech string, wrapped []byte) (*keys.DEK, error) {
	what := fmt.Sprintf("alikms-instance: unwrap DEK (%s) with %s", b, k.uri)
	if mech != InstanceMech {
		return nil, fmt.Errorf("%s: %w: %q is not %s", what, keys.ErrMechanism, mech, InstanceMech)
	}
	iv, ct, err := unframe(wrapped)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", what, keys.ErrUnwrapFailed, err)
	}
	aad, err := instanceAAD(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", what, keys.ErrUnwrapFailed, err)
	}
	req := &dkms.DecryptRequest{KeyId: tea.String(k.keyID), CiphertextBlob: ct, Iv: iv, Algorithm: tea.String(instanceAlgorithm), Aad: aad}
	resp, err := call(ctx, func() (*dkms.DecryptResponse, error) { return k.c.DecryptWithOptions(req, k.rt) })
	if err != nil {
		return nil, classify(what, opUnwrap, err)
	}
	defer clear(resp.Plaintext)
	if id := tea.StringValue(resp.KeyId); k.probed && id != "" && id != k.keyID {
		return nil, fmt.Errorf("%s: %w: the instance decrypted with key %q, not %s", what, keys.ErrUnwrapFailed, id, k.keyID)
	}
	d, err := keys.NewDEK(resp.Plaintext)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return d, nil
}

// GenerateDEK implements keys.Generator with GenerateDataKey (32 bytes);
// the data key's ciphertext is dropped: rekey wraps the DEK itself.
func (k *instanceKEK) GenerateDEK(ctx context.Context) (*keys.DEK, error) {
	what := "alikms-instance: GenerateDataKey with " + k.uri
	req := &dkms.GenerateDataKeyRequest{KeyId: tea.String(k.keyID), Algorithm: tea.String(instanceAlgorithm), NumberOfBytes: tea.Int32(keys.DEKSize)}
	resp, err := call(ctx, func() (*dkms.GenerateDataKeyResponse, error) { return k.c.GenerateDataKeyWithOptions(req, k.rt) })
	if err != nil {
		return nil, classify(what, opWrap, err)
	}
	defer clear(resp.Plaintext)
	if len(resp.Plaintext) != keys.DEKSize {
		return nil, fmt.Errorf("%s: %w: the instance returned %d bytes, want %d", what, keys.ErrBadKey, len(resp.Plaintext), keys.DEKSize)
	}
	return keys.NewDEK(resp.Plaintext)
}

// Preflight implements keys.Preflighter: the probe again, then a round
// trip of a throwaway key when wrapping is needed.
func (k *instanceKEK) Preflight(ctx context.Context, needWrap, needUnwrap bool) []keys.Check {
	name := "key " + k.uri
	id, ok, err := k.probe(ctx)
	if err != nil {
		return []keys.Check{{Name: name, Info: err.Error()}}
	}
	out := []keys.Check{{Name: name, OK: true, Info: "key " + id + ", " + instanceAlgorithm}}
	if !ok {
		out[0].Warn, out[0].Info = true, "the application access point does not allow Encrypt: the key's existence and state are not checked"
	}
	if !needWrap {
		return append(out, keys.Check{Name: "Decrypt with " + k.uri, OK: true, Info: "not tried: it needs a ciphertext (the first unwrap of the run checks it)"})
	}
	return append(out, roundTrip(ctx, k, needUnwrap))
}
