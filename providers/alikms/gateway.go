package alikms

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	openapi "github.com/alibabacloud-go/darabonba-openapi/v2/client"
	kms "github.com/alibabacloud-go/kms-20160120/v3/client"
	util "github.com/alibabacloud-go/tea-utils/v2/service"
	"github.com/alibabacloud-go/tea/tea"
	"github.com/aliyun/credentials-go/credentials"

	"rekey/providers/keys"
	"rekey/schemas"
)

// gatewayKEK is a KMS key behind the shared (or a dedicated) gateway's
// OpenAPI.
type gatewayKEK struct {
	ref       ref
	uri       string
	keyID     string    // what DescribeKey resolved the reference to
	principal string    // the AccessKey ID requests are signed with (not a secret)
	described bool      // false: DescribeKey was refused, the reference's key ID is used as is
	clients   sync.Pool // of *kms.Client, or the error making one
	rt        *util.RuntimeOptions
}

var (
	_ keys.KEK         = (*gatewayKEK)(nil)
	_ keys.Generator   = (*gatewayKEK)(nil)
	_ keys.Preflighter = (*gatewayKEK)(nil)
	_ keys.Rewrapper   = (*gatewayKEK)(nil)
)

func openGateway(ctx context.Context, uri string, opts keys.Options) (*gatewayKEK, error) {
	r, err := parseRef(GatewayScheme, uri)
	if err != nil {
		return nil, err
	}
	k := &gatewayKEK{ref: r, uri: r.canonical(), keyID: r.key}
	what := "alikms: open " + k.uri
	if err := guardDebug(what); err != nil {
		return nil, err
	}
	if opts.Wrap != "" && opts.Wrap != GatewayMech {
		return nil, fmt.Errorf("%s: %w: %q (alikms wraps with %s)", what, keys.ErrMechanism, opts.Wrap, GatewayMech)
	}
	cfg := &openapi.Config{
		RegionId:       tea.String(r.region),
		ReadTimeout:    tea.Int(readTimeoutMS),
		ConnectTimeout: tea.Int(connectTimeoutMS),
		MaxIdleConns:   tea.Int(max(opts.Sessions, 64)),
	}
	if r.endpoint != "" {
		cfg.Endpoint = tea.String(r.endpoint)
		if r.plain {
			cfg.Protocol = tea.String("HTTP")
		}
	}
	if k.principal, err = gatewayCredentials(cfg, r); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// The SDK's client is not safe for concurrent use (every call swaps
	// its RPC headers): one per call in flight, all on tea's shared HTTP
	// transport.
	base := *cfg
	k.clients.New = func() any {
		cfg := base
		c, err := kms.NewClient(&cfg)
		if err != nil {
			return fmt.Errorf("%w: %v", keys.ErrModule, err)
		}
		return c
	}
	switch c := k.clients.Get().(type) {
	case error:
		return nil, fmt.Errorf("%s: %w", what, c)
	default:
		k.clients.Put(c)
	}
	// rekey's keys.WithRetry retries; the SDK's own retryer stays off.
	k.rt = &util.RuntimeOptions{Autoretry: tea.Bool(false), MaxAttempts: tea.Int(1)}
	m, err := k.describe(ctx)
	var ae *APIError
	switch {
	case err == nil:
		if err := m.usable(); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		k.keyID, k.described = m.id, true
	case errors.Is(err, keys.ErrNotPermitted) && errors.As(err, &ae) && strings.HasPrefix(ae.Code, "Forbidden") && !strings.Contains(r.key, "/"):
		// A policy granting only Encrypt and Decrypt: the key ID is
		// used as written, and Preflight says so.
	default:
		return nil, err
	}
	return k, nil
}

// gatewayCredentials puts the AccessKey into cfg: from credential-source,
// else from ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET
// and ALIBABA_CLOUD_SECURITY_TOKEN, else from the SDK's default chain
// (OIDC role, ~/.alibabacloud/credentials, ECS RAM role). It returns the
// AccessKey ID.
func gatewayCredentials(cfg *openapi.Config, r ref) (string, error) {
	var ak accessKey
	switch {
	case r.credentialSource != "":
		var err error
		if ak, err = readAccessKeyFile(r.credentialSource); err != nil {
			return "", err
		}
	case os.Getenv("ALIBABA_CLOUD_ACCESS_KEY_ID") != "" || os.Getenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET") != "":
		ak = accessKey{ID: os.Getenv("ALIBABA_CLOUD_ACCESS_KEY_ID"), Secret: Secret{os.Getenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")}, Token: Secret{os.Getenv("ALIBABA_CLOUD_SECURITY_TOKEN")}}
		if ak.ID == "" || ak.Secret.v == "" {
			return "", fmt.Errorf("%w: set both ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET", keys.ErrAuthFailed)
		}
	default:
		cred, err := credentials.NewCredential(nil)
		if err != nil {
			return "", fmt.Errorf("%w: no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or add ?credential-source=file:/path/to/accesskey.json", keys.ErrAuthFailed)
		}
		cfg.Credential = cred
		m, err := cred.GetCredential()
		if err != nil || m == nil {
			return "", fmt.Errorf("%w: the Alibaba Cloud credential chain returned no AccessKey", keys.ErrAuthFailed)
		}
		return tea.StringValue(m.AccessKeyId), nil
	}
	cfg.AccessKeyId, cfg.AccessKeySecret = tea.String(ak.ID), tea.String(ak.Secret.v)
	if ak.Token.v != "" {
		cfg.SecurityToken = tea.String(ak.Token.v)
	}
	return ak.ID, nil
}

// keyMeta is what DescribeKey says of a key.
type keyMeta struct{ id, state, spec, usage, level string }

func (k *gatewayKEK) describe(ctx context.Context) (keyMeta, error) {
	resp, err := sdk(ctx, k, func(c *kms.Client) (*kms.DescribeKeyResponse, error) {
		return c.DescribeKeyWithOptions(&kms.DescribeKeyRequest{KeyId: tea.String(k.ref.key)}, k.rt)
	})
	if err != nil {
		return keyMeta{}, classify("alikms: DescribeKey "+k.uri, opLookup, err)
	}
	if resp == nil || resp.Body == nil || resp.Body.KeyMetadata == nil || tea.StringValue(resp.Body.KeyMetadata.KeyId) == "" {
		return keyMeta{}, fmt.Errorf("alikms: DescribeKey %s: answer has no KeyMetadata", k.uri)
	}
	md := resp.Body.KeyMetadata
	return keyMeta{id: tea.StringValue(md.KeyId), state: tea.StringValue(md.KeyState), spec: tea.StringValue(md.KeySpec),
		usage: tea.StringValue(md.KeyUsage), level: tea.StringValue(md.ProtectionLevel)}, nil
}

// usable checks what Encrypt and Decrypt need: a symmetric key that
// encrypts, enabled.
func (m keyMeta) usable() error {
	switch {
	case m.usage != "" && m.usage != "ENCRYPT/DECRYPT":
		return fmt.Errorf("%w: key %s has usage %s; rekey needs an ENCRYPT/DECRYPT key", keys.ErrMechanism, m.id, m.usage)
	case m.spec != "" && !strings.HasPrefix(m.spec, "Aliyun_AES") && !strings.HasPrefix(m.spec, "Aliyun_SM4"):
		return fmt.Errorf("%w: key %s is a %s key; Encrypt and Decrypt need a symmetric key (Aliyun_AES_256, Aliyun_SM4)", keys.ErrMechanism, m.id, m.spec)
	case m.state != "Enabled":
		return fmt.Errorf("%w: key %s is %s (enable it, or cancel its deletion, in the KMS console)", keys.ErrNotPermitted, m.id, m.state)
	}
	return nil
}

// sdk runs f on a client of k's pool, through call.
func sdk[T any](ctx context.Context, k *gatewayKEK, f func(*kms.Client) (T, error)) (T, error) {
	v := k.clients.Get()
	c, ok := v.(*kms.Client)
	if !ok {
		var zero T
		return zero, v.(error)
	}
	return call(ctx, func() (T, error) {
		defer k.clients.Put(c)
		return f(c)
	})
}

// Reserved EncryptionContext names (see the package doc).
const (
	ctxDEKID     = "rekey:dek_id"
	ctxAADPrefix = "rekey:aad:"
	ctxReserved  = "rekey:"
)

// errBinding is a binding no EncryptionContext can carry faithfully.
var errBinding = errors.New("binding cannot be expressed as an EncryptionContext")

// encryptionContext maps a binding onto an EncryptionContext: its Context
// pairs as they are, the dek_id as rekey:dek_id, AAD element i as
// rekey:aad:<i> in standard base64. Nil for an unbound key.
func encryptionContext(b keys.Binding) (map[string]interface{}, error) {
	if b.IsZero() {
		return nil, nil
	}
	ec := make(map[string]interface{}, len(b.Context)+len(b.AAD)+1)
	for n, v := range b.Context {
		switch {
		case strings.HasPrefix(n, ctxReserved):
			return nil, fmt.Errorf("%w: context name %q is in rekey's reserved rekey: namespace", errBinding, cut(n))
		case !utf8.ValidString(n) || !utf8.ValidString(v):
			return nil, fmt.Errorf("%w: context entry %q is not UTF-8 text", errBinding, cut(n))
		}
		ec[n] = v
	}
	if b.DEKID != "" {
		if !utf8.ValidString(b.DEKID) {
			return nil, fmt.Errorf("%w: dek_id is not UTF-8 text", errBinding)
		}
		ec[ctxDEKID] = b.DEKID
	}
	for i, a := range b.AAD {
		ec[ctxAADPrefix+strconv.Itoa(i)] = base64.StdEncoding.EncodeToString([]byte(a))
	}
	return ec, nil
}

func (k *gatewayKEK) URI() string       { return k.uri }
func (k *gatewayKEK) Mechanism() string { return GatewayMech }
func (k *gatewayKEK) String() string    { return k.uri }
func (k *gatewayKEK) GoString() string  { return "alikms.KEK(" + k.uri + ")" }

// Matches reports whether a DEK table's reference names this key, by the
// reference it was opened with or by the key ID an alias resolved to.
func (k *gatewayKEK) Matches(ref string) bool {
	if keys.SameKey(ref, k.uri) {
		return true
	}
	id := k.ref
	id.key = k.keyID
	return k.keyID != k.ref.key && keys.SameKey(ref, id.canonical())
}

// Wrap implements keys.KEK with Encrypt.
func (k *gatewayKEK) Wrap(ctx context.Context, b keys.Binding, dek *keys.DEK) ([]byte, error) {
	what := fmt.Sprintf("alikms: wrap DEK (%s) with %s", b, k.uri)
	ec, err := encryptionContext(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	req := &kms.EncryptRequest{KeyId: tea.String(k.keyID), Plaintext: tea.String(base64.StdEncoding.EncodeToString(dek.Bytes())), EncryptionContext: ec}
	resp, err := sdk(ctx, k, func(c *kms.Client) (*kms.EncryptResponse, error) { return c.EncryptWithOptions(req, k.rt) })
	if err != nil {
		return nil, classify(what, opWrap, err)
	}
	if resp == nil || resp.Body == nil {
		return nil, fmt.Errorf("%s: empty answer", what)
	}
	if id := tea.StringValue(resp.Body.KeyId); k.described && id != k.keyID {
		return nil, fmt.Errorf("%s: KMS encrypted under key %q, not %s", what, id, k.keyID)
	}
	return decodeBlob(what, tea.StringValue(resp.Body.CiphertextBlob))
}

// decodeBlob turns an answer's CiphertextBlob into what DEK tables hold:
// its bytes, base64-decoded.
func decodeBlob(what, s string) ([]byte, error) {
	blob, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(blob) == 0 || len(blob) > schemas.MaxWrappedDEK {
		return nil, fmt.Errorf("%s: the answer's CiphertextBlob is not base64 of 1 to %d bytes", what, schemas.MaxWrappedDEK)
	}
	return blob, nil
}

// Unwrap implements keys.KEK with Decrypt, and refuses a key that Decrypt
// says was wrapped by another KMS key.
func (k *gatewayKEK) Unwrap(ctx context.Context, b keys.Binding, mech string, wrapped []byte) (*keys.DEK, error) {
	what := fmt.Sprintf("alikms: unwrap DEK (%s) with %s", b, k.uri)
	if mech != GatewayMech {
		return nil, fmt.Errorf("%s: %w: %q is not %s", what, keys.ErrMechanism, mech, GatewayMech)
	}
	if len(wrapped) == 0 || len(wrapped) > schemas.MaxWrappedDEK {
		return nil, fmt.Errorf("%s: %w: wrapped key is %d bytes, want 1 to %d", what, keys.ErrUnwrapFailed, len(wrapped), schemas.MaxWrappedDEK)
	}
	ec, err := encryptionContext(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", what, keys.ErrUnwrapFailed, err)
	}
	req := &kms.DecryptRequest{CiphertextBlob: tea.String(base64.StdEncoding.EncodeToString(wrapped)), EncryptionContext: ec}
	resp, err := sdk(ctx, k, func(c *kms.Client) (*kms.DecryptResponse, error) { return c.DecryptWithOptions(req, k.rt) })
	if err != nil {
		return nil, classify(what, opUnwrap, err)
	}
	if resp == nil || resp.Body == nil {
		return nil, fmt.Errorf("%s: empty answer", what)
	}
	if id := tea.StringValue(resp.Body.KeyId); id != k.keyID {
		return nil, fmt.Errorf("%s: %w: it was wrapped by KMS key %q, not by %s", what, keys.ErrUnwrapFailed, id, k.keyID)
	}
	return plainDEK(what, tea.StringValue(resp.Body.Plaintext), 0)
}

// plainDEK decodes an answer's base64 Plaintext into a DEK of want bytes
// (0: any length rekey takes).
func plainDEK(what, s string, want int) (*keys.DEK, error) {
	p, err := base64.StdEncoding.DecodeString(s)
	defer clear(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: the answer's Plaintext is not base64", what, keys.ErrUnwrapFailed)
	}
	if want != 0 && len(p) != want {
		return nil, fmt.Errorf("%s: %w: KMS returned %d bytes, want %d", what, keys.ErrBadKey, len(p), want)
	}
	d, err := keys.NewDEK(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return d, nil
}

// GenerateDEK implements keys.Generator with GenerateDataKey (AES_256);
// the data key's ciphertext is dropped: rekey wraps the DEK itself.
func (k *gatewayKEK) GenerateDEK(ctx context.Context) (*keys.DEK, error) {
	what := "alikms: GenerateDataKey with " + k.uri
	req := &kms.GenerateDataKeyRequest{KeyId: tea.String(k.keyID), KeySpec: tea.String("AES_256")}
	resp, err := sdk(ctx, k, func(c *kms.Client) (*kms.GenerateDataKeyResponse, error) {
		return c.GenerateDataKeyWithOptions(req, k.rt)
	})
	if err != nil {
		return nil, classify(what, opWrap, err)
	}
	if resp == nil || resp.Body == nil {
		return nil, fmt.Errorf("%s: empty answer", what)
	}
	return plainDEK(what, tea.StringValue(resp.Body.Plaintext), keys.DEKSize)
}

// CanRewrapTo implements keys.Rewrapper: ReEncrypt reaches another key of
// the same gateway and region, signed with the same AccessKey.
func (k *gatewayKEK) CanRewrapTo(dst keys.KEK, srcMech string) bool {
	d, ok := dst.(*gatewayKEK)
	return ok && srcMech == GatewayMech && d.ref.custodian() == k.ref.custodian() &&
		d.principal == k.principal && k.principal != ""
}

// Rewrap implements keys.Rewrapper with ReEncrypt: the DEK never leaves
// KMS. KMS checks nothing rekey can see (no KCV), so the result is not
// Verified; and ReEncrypt does not say which key the source was wrapped
// by, so a source wrapped by another key of the account is moved rather
// than refused.
func (k *gatewayKEK) Rewrap(ctx context.Context, r keys.RewrapRequest) (keys.RewrapResult, error) {
	d, ok := r.Dst.(*gatewayKEK)
	if !ok || !k.CanRewrapTo(d, r.SrcMech) {
		return keys.RewrapResult{}, fmt.Errorf("alikms: rewrap from %s: %w", k.uri, keys.ErrNoRewrap)
	}
	what := fmt.Sprintf("alikms: ReEncrypt DEK (%s) from %s to %s", r.Src, k.uri, d.uri)
	if len(r.Wrapped) == 0 || len(r.Wrapped) > schemas.MaxWrappedDEK {
		return keys.RewrapResult{}, fmt.Errorf("%s: %w: wrapped key is %d bytes, want 1 to %d", what, keys.ErrUnwrapFailed, len(r.Wrapped), schemas.MaxWrappedDEK)
	}
	src, err := encryptionContext(r.Src)
	if err != nil {
		return keys.RewrapResult{}, fmt.Errorf("%s: %w: %w", what, keys.ErrUnwrapFailed, err)
	}
	dst, err := encryptionContext(r.DstB)
	if err != nil {
		return keys.RewrapResult{}, fmt.Errorf("%s: %w", what, err)
	}
	req := &kms.ReEncryptRequest{
		CiphertextBlob:               tea.String(base64.StdEncoding.EncodeToString(r.Wrapped)),
		SourceEncryptionContext:      src,
		DestinationKeyId:             tea.String(d.keyID),
		DestinationEncryptionContext: dst,
	}
	resp, err := sdk(ctx, k, func(c *kms.Client) (*kms.ReEncryptResponse, error) { return c.ReEncryptWithOptions(req, k.rt) })
	if err != nil {
		return keys.RewrapResult{}, classify(what, opUnwrap, err)
	}
	if resp == nil || resp.Body == nil {
		return keys.RewrapResult{}, fmt.Errorf("%s: empty answer", what)
	}
	if id := tea.StringValue(resp.Body.KeyId); d.described && id != d.keyID {
		return keys.RewrapResult{}, fmt.Errorf("%s: KMS re-encrypted under key %q, not %s", what, id, d.keyID)
	}
	blob, err := decodeBlob(what, tea.StringValue(resp.Body.CiphertextBlob))
	if err != nil {
		return keys.RewrapResult{}, err
	}
	return keys.RewrapResult{Wrapped: blob}, nil
}

// Preflight implements keys.Preflighter: the key's metadata, then an
// Encrypt/Decrypt round trip of a throwaway key when wrapping is needed
// (Decrypt alone cannot be tried without a ciphertext).
func (k *gatewayKEK) Preflight(ctx context.Context, needWrap, needUnwrap bool) []keys.Check {
	var out []keys.Check
	name := "key " + k.uri
	m, err := k.describe(ctx)
	switch {
	case err == nil:
		c := keys.Check{Name: name, OK: true, Info: fmt.Sprintf("%s, %s, %s, %s", m.id, m.spec, m.state, m.level)}
		if err := m.usable(); err != nil {
			c.OK, c.Info = false, err.Error()
		}
		out = append(out, c)
	case !k.described && errors.Is(err, keys.ErrNotPermitted):
		out = append(out, keys.Check{Name: name, OK: true, Warn: true, Info: "DescribeKey is not allowed: the key's state is not checked (grant kms:DescribeKey to see it)"})
	default:
		return append(out, keys.Check{Name: name, OK: false, Info: err.Error()})
	}
	if !needWrap {
		return append(out, keys.Check{Name: "Decrypt with " + k.uri, OK: true, Info: "not tried: it needs a ciphertext (the first unwrap of the run checks it)"})
	}
	return append(out, roundTrip(ctx, k, needUnwrap))
}
