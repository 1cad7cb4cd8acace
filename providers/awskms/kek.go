package awskms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"rekey/providers/keys"
	"rekey/schemas"
)

// Mechanism is the wrap mechanism of this scheme, as DEK tables write it:
// KMS Encrypt with a symmetric encryption key (SYMMETRIC_DEFAULT).
const Mechanism = "aws-kms"

// DefaultRate is the default budget of one custodian (an account's KMS in
// one region), in requests per second: the smallest default of the
// "Cryptographic operations (symmetric) request rate" quota (see the
// package doc).
const DefaultRate = 10000

// DefaultConcurrency is how many KMS requests a worker process keeps in
// flight when the job sets no --workers: KMS answers in about 5-20 ms in
// its region, so 32 in flight reach a few thousand requests per second,
// within DefaultRate.
const DefaultConcurrency = 32

func init() {
	keys.Register(keys.Scheme{
		Name: Scheme,
		Open: func(ctx context.Context, uri string, opts keys.Options) (keys.KEK, error) {
			k, err := Open(ctx, uri, opts)
			if err != nil {
				return nil, err // not a typed nil inside a non-nil interface
			}
			return k, nil
		},
		Parse:       parseKeysRef,
		Mechanisms:  []string{Mechanism},
		Example:     example,
		Import:      "rekey/providers/awskms",
		Rate:        DefaultRate,
		Concurrency: DefaultConcurrency,
	})
}

// Config replaces parts of the SDK's default setup; the zero Config is
// what the registry opens with.
type Config struct {
	// HTTPClient replaces the SDK's (tests inject faults with it).
	HTTPClient aws.HTTPClient
	// Credentials replaces the default credential chain.
	Credentials aws.CredentialsProvider
}

// Timeout bounds one KMS request; a request that takes longer fails as
// transient and keys.WithRetry tries again.
const Timeout = 30 * time.Second

// KEK is a symmetric encryption key in AWS KMS.
type KEK struct {
	ref      Ref    // as opened, region resolved
	keyID    string // what requests name: the key ARN once resolved
	arn      string // key ARN; empty when DescribeKey was not allowed
	account  string
	endpoint string // effective endpoint; empty for AWS's own
	uri      string
	cli      *kms.Client
	creds    aws.CredentialsProvider
}

var (
	_ keys.KEK         = (*KEK)(nil)
	_ keys.Generator   = (*KEK)(nil)
	_ keys.Preflighter = (*KEK)(nil)
	_ keys.Rewrapper   = (*KEK)(nil)
)

// Open opens the key uri names with the SDK's default configuration.
func Open(ctx context.Context, uri string, opts keys.Options) (*KEK, error) {
	return Config{}.Open(ctx, uri, opts)
}

// Open resolves credentials and region the SDK's way (environment, shared
// files, web identity, instance role), then describes the key: it must
// exist and be a symmetric encryption key. A key that may not be
// described (no kms:DescribeKey) is opened as named.
func (c Config) Open(ctx context.Context, uri string, opts keys.Options) (*KEK, error) {
	r, err := ParseRef(uri)
	if err != nil {
		return nil, err
	}
	if opts.Wrap != "" && opts.Wrap != Mechanism {
		return nil, fmt.Errorf("key %s: %w: %q (awskms wraps with %s)", r.Canonical(), keys.ErrMechanism, opts.Wrap, Mechanism)
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = awshttp.NewBuildableClient().WithTimeout(Timeout).WithTransportOptions(func(t *http.Transport) {
			// Every worker goroutine keeps its connection.
			t.MaxIdleConnsPerHost = max(64, opts.Sessions)
			if opts.Sessions > 0 {
				t.MaxConnsPerHost = opts.Sessions
			}
		})
	}
	lo := []func(*config.LoadOptions) error{
		config.WithHTTPClient(hc),
		// keys.WithRetry retries, with rekey's backoff and shared rate.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if r.Region != "" {
		lo = append(lo, config.WithRegion(r.Region))
	}
	if r.Profile != "" {
		lo = append(lo, config.WithSharedConfigProfile(r.Profile))
	}
	if c.Credentials != nil {
		lo = append(lo, config.WithCredentialsProvider(c.Credentials))
	}
	cfg, err := config.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w: AWS configuration: %v", r.Canonical(), keys.ErrAuthFailed, err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("%w: key %s names no region: add ?region=, use a key ARN, or set AWS_REGION", keys.ErrBadURI, r.Canonical())
	}
	r.Region = cfg.Region
	cli := kms.NewFromConfig(cfg, func(o *kms.Options) {
		if r.Endpoint != "" {
			o.BaseEndpoint = aws.String(r.Endpoint)
		}
	})
	k := &KEK{ref: r, keyID: r.Key, account: r.Account, cli: cli, creds: cfg.Credentials, uri: r.Canonical()}
	if ep := cli.Options().BaseEndpoint; ep != nil {
		k.endpoint = *ep
	}
	meta, err := k.describe(ctx)
	var se *ServiceError
	switch {
	case errors.As(err, &se) && se.Code == "AccessDeniedException":
		return k, nil // named as given; Preflight says it could not look
	case err != nil:
		return nil, err
	}
	if err := symmetric(meta); err != nil {
		return nil, fmt.Errorf("key %s: %w", k.uri, err)
	}
	k.arn, k.keyID = aws.ToString(meta.Arn), aws.ToString(meta.Arn)
	k.account = aws.ToString(meta.AWSAccountId)
	k.uri = Scheme + ":" + k.arn
	return k, nil
}

func (k *KEK) describe(ctx context.Context) (*types.KeyMetadata, error) {
	out, err := k.cli.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &k.keyID})
	if err != nil {
		return nil, classify(ctx, err, opDescribe, "describe key "+k.uri, k.ref.Region)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.Arn == nil {
		return nil, fmt.Errorf("describe key %s: AWS KMS answered without key metadata", k.uri)
	}
	return out.KeyMetadata, nil
}

// symmetric checks that a key can do what aws-kms does.
func symmetric(m *types.KeyMetadata) error {
	if m.KeyUsage != "" && m.KeyUsage != types.KeyUsageTypeEncryptDecrypt ||
		m.KeySpec != "" && m.KeySpec != types.KeySpecSymmetricDefault {
		return fmt.Errorf("%w: it is a %s key for %s; aws-kms wraps with symmetric encryption keys (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT)", keys.ErrMechanism, m.KeySpec, m.KeyUsage)
	}
	return nil
}

// URI implements keys.KEK: the key's ARN once resolved, so that a DEK
// table records the key that wrapped, not an alias that may move.
func (k *KEK) URI() string { return k.uri }

// String names the key; a KEK holds no secret, but its SDK client holds
// cached credentials, which fmt must not walk into.
func (k *KEK) String() string { return "awskms KEK " + k.uri }

// GoString is String.
func (k *KEK) GoString() string { return k.String() }

// Mechanism implements keys.KEK.
func (k *KEK) Mechanism() string { return Mechanism }

// CustodianID is AWS KMS in the key's region and account (see
// Ref.Custodian), with the account resolved when the key was described.
func (k *KEK) CustodianID() string { return Scheme + "|" + k.ref.Region + "|" + k.account }

// Matches reports whether a DEK table's kek reference names this key:
// by its ARN, its key id in its region, or the alias it was opened by.
func (k *KEK) Matches(ref string) bool {
	r, err := ParseRef(ref)
	if err != nil {
		return false
	}
	c := r.Canonical()
	if c == k.uri || c == k.ref.Canonical() {
		return true
	}
	if k.arn == "" {
		return false
	}
	return r.Region == k.ref.Region && r.Key == k.arn[strings.LastIndex(k.arn, "/")+1:]
}

// Binding keys of the encryption context (see the package doc).
const (
	ContextDEKID     = "rekey:dek_id"
	ContextAADPrefix = "rekey:aad:"
	reservedPrefix   = "rekey:"
)

// EncryptionContext is the encryption context b maps to: its Context
// entries as they are, its DEKID under "rekey:dek_id", and its AAD
// entries under "rekey:aad:0", "rekey:aad:1", ... A zero binding is no
// context. Context keys starting with "rekey:" are refused, so that no
// binding can pass for another.
func EncryptionContext(b keys.Binding) (map[string]string, error) {
	if b.IsZero() {
		return nil, nil
	}
	ec := make(map[string]string, len(b.Context)+len(b.AAD)+1)
	for name, v := range b.Context {
		if strings.HasPrefix(name, reservedPrefix) {
			return nil, fmt.Errorf("encryption context key %q: the prefix %q is rekey's (dek_id, aad)", name, reservedPrefix)
		}
		ec[name] = v
	}
	if b.DEKID != "" {
		ec[ContextDEKID] = b.DEKID
	}
	for i, a := range b.AAD {
		ec[fmt.Sprintf("%s%d", ContextAADPrefix, i)] = a
	}
	return ec, nil
}

// Wrap implements keys.KEK with KMS Encrypt.
func (k *KEK) Wrap(ctx context.Context, b keys.Binding, dek *keys.DEK) ([]byte, error) {
	what := fmt.Sprintf("wrap DEK (%s) with %s", b, k.uri)
	ec, err := EncryptionContext(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, err := k.cli.Encrypt(ctx, &kms.EncryptInput{
		KeyId: &k.keyID, Plaintext: dek.Bytes(), EncryptionContext: ec,
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
	})
	if err != nil {
		return nil, classify(ctx, err, opEncrypt, what, k.ref.Region)
	}
	if n := len(out.CiphertextBlob); n == 0 || n > schemas.MaxWrappedDEK {
		return nil, fmt.Errorf("%s: AWS KMS returned a %d-byte ciphertext (DEK tables hold 1 to %d)", what, n, schemas.MaxWrappedDEK)
	}
	return out.CiphertextBlob, nil
}

// checkWrapped refuses what cannot be a KMS ciphertext of a DEK before it
// is sent: AWS takes 1 to 6144 bytes, DEK tables hold 4096.
func checkWrapped(what string, w []byte) error {
	if len(w) == 0 || len(w) > schemas.MaxWrappedDEK {
		return fmt.Errorf("%s: %w: wrapped key is %d bytes, want 1 to %d", what, keys.ErrUnwrapFailed, len(w), schemas.MaxWrappedDEK)
	}
	return nil
}

// Unwrap implements keys.KEK with KMS Decrypt. KeyId is always this key,
// so that a ciphertext of another key is refused (IncorrectKeyException)
// rather than decrypted with whichever key it names.
func (k *KEK) Unwrap(ctx context.Context, b keys.Binding, mech string, wrapped []byte) (*keys.DEK, error) {
	what := fmt.Sprintf("unwrap DEK (%s) with %s", b, k.uri)
	if mech != Mechanism {
		return nil, fmt.Errorf("%s: %w: %q (awskms unwraps %s)", what, keys.ErrMechanism, mech, Mechanism)
	}
	if err := checkWrapped(what, wrapped); err != nil {
		return nil, err
	}
	ec, err := EncryptionContext(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", what, keys.ErrUnwrapFailed, err)
	}
	out, err := k.cli.Decrypt(ctx, &kms.DecryptInput{
		KeyId: &k.keyID, CiphertextBlob: wrapped, EncryptionContext: ec,
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
	})
	if err != nil {
		return nil, classify(ctx, err, opDecrypt, what, k.ref.Region)
	}
	defer clear(out.Plaintext)
	if k.arn != "" && aws.ToString(out.KeyId) != k.arn {
		return nil, fmt.Errorf("%s: %w: AWS KMS decrypted with %s", what, keys.ErrUnwrapFailed, aws.ToString(out.KeyId))
	}
	dek, err := keys.NewDEK(out.Plaintext)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return dek, nil
}

// GenerateDEK implements keys.Generator with KMS GenerateDataKey (AES_256).
// The ciphertext it also returns is dropped: rekey wraps the DEK with its
// own binding afterwards.
func (k *KEK) GenerateDEK(ctx context.Context) (*keys.DEK, error) {
	what := "generate a DEK with " + k.uri
	out, err := k.cli.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: &k.keyID, KeySpec: types.DataKeySpecAes256})
	if err != nil {
		return nil, classify(ctx, err, opGenerate, what, k.ref.Region)
	}
	defer clear(out.Plaintext)
	if len(out.Plaintext) != keys.DEKSize {
		return nil, fmt.Errorf("%s: AWS KMS returned %d bytes, want %d", what, len(out.Plaintext), keys.DEKSize)
	}
	return keys.NewDEK(out.Plaintext)
}

// CanRewrapTo implements keys.Rewrapper: ReEncrypt reaches another aws-kms
// key through the same KMS (region and endpoint) with the same
// credentials (profile). The target may be in another account. KMS keys
// are regional, so across regions the caller unwraps and wraps itself.
func (k *KEK) CanRewrapTo(dst keys.KEK, srcMech string) bool {
	d, ok := dst.(*KEK)
	return ok && srcMech == Mechanism && d.ref.Region == k.ref.Region && d.endpoint == k.endpoint && d.ref.Profile == k.ref.Profile
}

// Rewrap implements keys.Rewrapper with KMS ReEncrypt, called with this
// (the source) key's client: the DEK never leaves KMS. KMS cannot check
// rekey's KCV, so Proof stays empty and the caller verifies.
func (k *KEK) Rewrap(ctx context.Context, q keys.RewrapRequest) (keys.RewrapResult, error) {
	d, ok := q.Dst.(*KEK)
	if !ok || !k.CanRewrapTo(d, q.SrcMech) {
		return keys.RewrapResult{}, fmt.Errorf("%w: %s to %s", keys.ErrNoRewrap, k.uri, keys.Redact(q.Dst.URI()))
	}
	what := fmt.Sprintf("re-encrypt DEK (%s) from %s to %s (%s)", q.Src, k.uri, d.uri, q.DstB)
	if err := checkWrapped(what, q.Wrapped); err != nil {
		return keys.RewrapResult{}, err
	}
	src, err := EncryptionContext(q.Src)
	if err != nil {
		return keys.RewrapResult{}, fmt.Errorf("%s: %w: %w", what, keys.ErrUnwrapFailed, err)
	}
	dst, err := EncryptionContext(q.DstB)
	if err != nil {
		return keys.RewrapResult{}, fmt.Errorf("%s: %w", what, err)
	}
	out, err := k.cli.ReEncrypt(ctx, &kms.ReEncryptInput{
		CiphertextBlob: q.Wrapped, SourceKeyId: &k.keyID, SourceEncryptionContext: src,
		DestinationKeyId: &d.keyID, DestinationEncryptionContext: dst,
		SourceEncryptionAlgorithm:      types.EncryptionAlgorithmSpecSymmetricDefault,
		DestinationEncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
	})
	if err != nil {
		return keys.RewrapResult{}, classify(ctx, err, opReEncrypt, what, k.ref.Region)
	}
	if d.arn != "" && aws.ToString(out.KeyId) != d.arn {
		return keys.RewrapResult{}, fmt.Errorf("%s: AWS KMS re-encrypted under %s", what, aws.ToString(out.KeyId))
	}
	if n := len(out.CiphertextBlob); n == 0 || n > schemas.MaxWrappedDEK {
		return keys.RewrapResult{}, fmt.Errorf("%s: AWS KMS returned a %d-byte ciphertext", what, n)
	}
	return keys.RewrapResult{Wrapped: out.CiphertextBlob}, nil
}

// Preflight implements keys.Preflighter: credentials found, the key's
// metadata (exists, enabled, symmetric), then a test Encrypt/Decrypt
// round trip when wrapping is needed, or a Decrypt dry run when only
// unwrapping is.
func (k *KEK) Preflight(ctx context.Context, needWrap, needUnwrap bool) []keys.Check {
	var out []keys.Check
	creds, err := k.creds.Retrieve(ctx)
	if err != nil {
		return append(out, keys.Check{Name: "AWS credentials for " + k.uri, Info: transport(err, "retrieve credentials").Error()})
	}
	out = append(out, keys.Check{Name: "AWS credentials for " + k.uri, OK: true, Info: "from " + creds.Source})
	name := "key " + k.uri
	meta, err := k.describe(ctx)
	var se *ServiceError
	switch {
	case errors.As(err, &se) && se.Code == "AccessDeniedException":
		out = append(out, keys.Check{Name: name, OK: true, Warn: true, Info: "kms:DescribeKey is not allowed: key state and type not checked"})
	case err != nil:
		return append(out, keys.Check{Name: name, Info: err.Error()})
	default:
		info := fmt.Sprintf("%s %s key in %s, account %s, state %s", meta.KeySpec, meta.KeyUsage, k.ref.Region, aws.ToString(meta.AWSAccountId), meta.KeyState)
		if err := symmetric(meta); err != nil {
			return append(out, keys.Check{Name: name, Info: err.Error()})
		}
		if !meta.Enabled || meta.KeyState != types.KeyStateEnabled {
			return append(out, keys.Check{Name: name, Info: info + ": the key cannot be used until it is Enabled (aws kms enable-key, or cancel-key-deletion)"})
		}
		out = append(out, keys.Check{Name: name, OK: true, Info: info})
	}
	switch {
	case needWrap:
		out = append(out, k.roundTrip(ctx))
	case needUnwrap:
		out = append(out, k.dryRunDecrypt(ctx))
	}
	return out
}

func (k *KEK) roundTrip(ctx context.Context) keys.Check {
	name := "test wrap/unwrap round trip with " + k.uri
	test, err := keys.NewDEK(bytes.Repeat([]byte{0x5a}, keys.DEKSize))
	if err != nil {
		return keys.Check{Name: name, Info: err.Error()}
	}
	defer test.Zero()
	b := keys.ByID("rekey-preflight")
	w, err := k.Wrap(ctx, b, test)
	if err != nil {
		return keys.Check{Name: name, Info: err.Error()}
	}
	got, err := k.Unwrap(ctx, b, Mechanism, w)
	if err != nil {
		return keys.Check{Name: name, Info: err.Error()}
	}
	defer got.Zero()
	if !bytes.Equal(got.Bytes(), test.Bytes()) {
		return keys.Check{Name: name, Info: "the unwrapped key differs from the wrapped one"}
	}
	return keys.Check{Name: name, OK: true, Info: "Encrypt and Decrypt allowed"}
}

// dryRunDecrypt asks KMS whether Decrypt would be authorised, without a
// ciphertext (DryRun with IGNORE_CIPHERTEXT).
func (k *KEK) dryRunDecrypt(ctx context.Context) keys.Check {
	name := "kms:Decrypt on " + k.uri
	_, err := k.cli.Decrypt(ctx, &kms.DecryptInput{KeyId: &k.keyID, DryRun: aws.Bool(true),
		DryRunModifiers: []types.DryRunModifierType{types.DryRunModifierTypeIgnoreCiphertext}})
	var dry *types.DryRunOperationException
	switch {
	case err == nil:
		return keys.Check{Name: name, OK: true, Warn: true, Info: "could not be tested (this KMS ignores dry runs)"}
	case errors.As(err, &dry):
		return keys.Check{Name: name, OK: true, Info: "allowed (dry run)"}
	}
	err = classify(ctx, err, opDecrypt, "dry-run decrypt with "+k.uri, k.ref.Region)
	if errors.Is(err, keys.ErrNotPermitted) || errors.Is(err, keys.ErrAuthFailed) || errors.Is(err, keys.ErrKeyNotFound) {
		return keys.Check{Name: name, Info: err.Error()}
	}
	return keys.Check{Name: name, OK: true, Warn: true, Info: "could not be tested (this KMS does not answer dry runs): " + err.Error()}
}
