package kmsfake

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"

	openapiutil "github.com/alibabacloud-go/openapi-util/service"
	"github.com/alibabacloud-go/tea/tea"
)

// Gateway is a fake of the KMS OpenAPI (version 2016-01-20) as the
// shared gateway serves it, over plain HTTP on 127.0.0.1.
//
// It checks: the ACS3-HMAC-SHA256 signature (recomputed with the SDK's
// openapi-util over the method, path, query, host and x-acs-* headers and
// the body's SHA-256), the AccessKey ID and STS token, x-acs-date within
// 15 minutes, x-acs-signature-nonce not reused, x-acs-version; key IDs,
// aliases and ARNs; key states (Enabled, Disabled, PendingDeletion);
// EncryptionContext as AES-GCM additional data; key versions (Decrypt of
// an older version after RotateKey).
//
// It does not check: RAM policies (every AccessKey may do everything but
// the actions Deny refuses it),
// ListKeys and other actions, the older HMAC-SHA1 (v1) signature, HTTPS
// (an SDK's TLS setup is not exercised), asymmetric keys, DryRun, request
// size limits other than Encrypt's 6 KB, per-account quotas (throttling
// comes only from Faults). Its CiphertextBlob format (key version ID,
// nonce, AES-GCM) is its own; the real one is undocumented. The error
// code for a ciphertext that fails authentication (a damaged blob, the
// wrong EncryptionContext) is undocumented: the fake answers HTTP 400
// InvalidParameter.
type Gateway struct {
	faults
	Region    string
	AccountID string

	srv      *httptest.Server
	mu       sync.Mutex
	creds    map[string]credential
	keys     map[string]*gkey
	versions map[string]*gkey // version ID -> key
	aliases  map[string]string
	nonces   map[string]time.Time
}

type credential struct{ secret, token string }

type gkey struct {
	id, state string
	versions  []gversion // the last is primary
}

type gversion struct {
	id  string
	gcm cipher.AEAD
}

// NewGateway starts a fake gateway for region.
func NewGateway(region string) *Gateway {
	g := &Gateway{Region: region, AccountID: "1234567890123456", creds: map[string]credential{},
		keys: map[string]*gkey{}, versions: map[string]*gkey{}, aliases: map[string]string{}, nonces: map[string]time.Time{}}
	g.srv = httptest.NewServer(g)
	return g
}

// Close stops the server.
func (g *Gateway) Close() { g.srv.Close() }

// Endpoint is the server's endpoint as an alikms reference takes it.
func (g *Gateway) Endpoint() string { return g.srv.URL }

// AddAccessKey lets the AccessKey sign requests; token, when not empty, is
// the STS token it must come with.
func (g *Gateway) AddAccessKey(id, secret, token string) {
	g.mu.Lock()
	g.creds[id] = credential{secret, token}
	g.mu.Unlock()
}

// CreateKey makes an enabled Aliyun_AES_256 key and returns its ID.
func (g *Gateway) CreateKey() string {
	k := &gkey{id: uuid(), state: "Enabled"}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.keys[k.id] = k
	g.rotate(k)
	return k.id
}

// CreateAlias points alias/<name> at a key.
func (g *Gateway) CreateAlias(alias, keyID string) {
	g.mu.Lock()
	g.aliases[alias] = keyID
	g.mu.Unlock()
}

// SetKeyState sets a key's state: Enabled, Disabled or PendingDeletion.
func (g *Gateway) SetKeyState(keyID, state string) {
	g.mu.Lock()
	g.keys[keyID].state = state
	g.mu.Unlock()
}

// RotateKey gives a key a new primary version; older ones still decrypt.
func (g *Gateway) RotateKey(keyID string) {
	g.mu.Lock()
	g.rotate(g.keys[keyID])
	g.mu.Unlock()
}

func (g *Gateway) rotate(k *gkey) {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	block, _ := aes.NewCipher(secret)
	gcm, _ := cipher.NewGCM(block)
	v := gversion{id: uuid(), gcm: gcm}
	k.versions = append(k.versions, v)
	g.versions[v.id] = k
}

// apiErr is an error answer.
type apiErr struct {
	status        int
	code, message string
}

func errf(status int, code, format string, a ...any) *apiErr {
	return &apiErr{status, code, fmt.Sprintf(format, a...)}
}

func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := strings.ToUpper(uuid())
	action, params, ak, e := g.authenticate(r)
	if e == nil && g.isDenied(ak, action) {
		e = errf(403, "Forbidden.NoPermission", "This operation is forbidden by permission system.")
	}
	if e == nil {
		switch g.inject(action) {
		case 429:
			e = errf(429, "Rejected.Throttling", "QPS Limit Exceeded")
		case 503:
			e = errf(503, "ServiceUnavailableTemporary", "Service Unavailable Temporary.")
		}
	}
	var out map[string]any
	if e == nil {
		out, e = g.do(action, params)
	}
	w.Header().Set("Content-Type", "application/json;charset=utf-8")
	if e != nil {
		w.WriteHeader(e.status)
		_ = json.NewEncoder(w).Encode(map[string]any{"HttpStatus": e.status, "Code": e.code, "Message": e.message,
			"RequestId": reqID, "HostId": r.Host, "Recommend": "https://api.aliyun.com/troubleshoot?q=" + e.code})
		return
	}
	out["RequestId"] = reqID
	_ = json.NewEncoder(w).Encode(out)
}

// authenticate checks the request's ACS3-HMAC-SHA256 signature and
// returns its action and parameters.
func (g *Gateway) authenticate(r *http.Request) (action string, params url.Values, ak string, e *apiErr) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		return "", nil, "", errf(403, "UnsupportedHTTPMethod", "This http method is not supported.")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return "", nil, "", errf(400, "InvalidParameter", "unreadable body")
	}
	h := func(n string) string { return r.Header.Get(n) }
	action = h("x-acs-action")
	switch {
	case h("x-acs-version") != "2016-01-20":
		return "", nil, "", errf(400, "InvalidVersion", "Specified parameter Version is not valid.")
	case action == "":
		return "", nil, "", errf(400, "MissingParameter", "The parameter \"Action\" is needed but not provided.")
	}
	sum := sha256.Sum256(body)
	if h("x-acs-content-sha256") != hex.EncodeToString(sum[:]) {
		return "", nil, "", errf(400, "IncompleteSignature", "The request signature does not conform to Alibaba Cloud standards.")
	}
	auth, ok := strings.CutPrefix(h("Authorization"), "ACS3-HMAC-SHA256 ")
	if !ok {
		return "", nil, "", errf(400, "IncompleteSignature", "The request signature does not conform to Alibaba Cloud standards.")
	}
	for _, part := range strings.Split(auth, ",") {
		if v, ok := strings.CutPrefix(part, "Credential="); ok {
			ak = v
		}
	}
	g.mu.Lock()
	c, known := g.creds[ak]
	g.mu.Unlock()
	if !known {
		return "", nil, "", errf(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
	}
	if c.token != "" && h("x-acs-security-token") != c.token {
		return "", nil, "", errf(400, "InvalidSecurityToken.MismatchWithAccessKey", "Specified SecurityToken mismatch with the AccessKey.")
	}
	// The SDK's own signer, over what arrived.
	q := r.URL.Query()
	req := &tea.Request{Method: tea.String(r.Method), Pathname: tea.String(r.URL.Path), Query: map[string]*string{}, Headers: map[string]*string{}}
	for k, v := range q {
		req.Query[k] = tea.String(v[0])
	}
	for k, v := range r.Header {
		req.Headers[strings.ToLower(k)] = tea.String(v[0])
	}
	req.Headers["host"] = tea.String(r.Host)
	want := openapiutil.GetAuthorization(req, tea.String("ACS3-HMAC-SHA256"), tea.String(h("x-acs-content-sha256")), tea.String(ak), tea.String(c.secret))
	if !hmac.Equal([]byte(tea.StringValue(want)), []byte(h("Authorization"))) {
		// Like some Alibaba services, the answer echoes what the server
		// signed: the query, with Encrypt's plaintext. A client must not
		// print it.
		return "", nil, "", errf(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation. server string to sign is:%s", r.URL.RawQuery)
	}
	t, err := time.Parse("2006-01-02T15:04:05Z", h("x-acs-date"))
	if err != nil || time.Since(t).Abs() > 15*time.Minute {
		return "", nil, "", errf(400, "IllegalTimestamp", "The input parameter \"Timestamp\" that is mandatory for processing this request is not supplied.")
	}
	nonce := h("x-acs-signature-nonce")
	g.mu.Lock()
	_, replay := g.nonces[nonce]
	g.nonces[nonce] = t
	for n, at := range g.nonces {
		if time.Since(at) > 15*time.Minute {
			delete(g.nonces, n)
		}
	}
	g.mu.Unlock()
	if nonce == "" || replay {
		return "", nil, "", errf(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
	}
	if strings.HasPrefix(h("Content-Type"), "application/x-www-form-urlencoded") {
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return "", nil, "", errf(400, "InvalidParameter", "The form body does not parse.")
		}
		for k, v := range form {
			q[k] = v
		}
	}
	return action, q, ak, nil
}

func (g *Gateway) do(action string, p url.Values) (map[string]any, *apiErr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch action {
	case "DescribeKey":
		k, e := g.key(p.Get("KeyId"), false)
		if e != nil {
			return nil, e
		}
		return map[string]any{"KeyMetadata": map[string]any{
			"KeyId": k.id, "KeyState": k.state, "KeySpec": "Aliyun_AES_256", "KeyUsage": "ENCRYPT/DECRYPT",
			"Arn": fmt.Sprintf("acs:kms:%s:%s:key/%s", g.Region, g.AccountID, k.id), "Origin": "Aliyun_KMS",
			"ProtectionLevel": "SOFTWARE", "PrimaryKeyVersion": k.versions[len(k.versions)-1].id,
			"CreationDate": "2024-01-01T00:00:00Z", "Creator": g.AccountID,
		}}, nil
	case "Encrypt":
		k, e := g.key(p.Get("KeyId"), true)
		if e != nil {
			return nil, e
		}
		pt, err := base64.StdEncoding.DecodeString(p.Get("Plaintext"))
		if err != nil || len(pt) == 0 || len(pt) > 6144 {
			return nil, errf(400, "InvalidParameter", "The specified parameter \"Plaintext\" is not valid.")
		}
		ec, e := parseContext(p.Get("EncryptionContext"))
		if e != nil {
			return nil, e
		}
		v, blob := k.seal(pt, ec)
		return map[string]any{"KeyId": k.id, "KeyVersionId": v, "CiphertextBlob": blob}, nil
	case "GenerateDataKey":
		k, e := g.key(p.Get("KeyId"), true)
		if e != nil {
			return nil, e
		}
		n := 32
		switch spec := p.Get("KeySpec"); {
		case spec == "AES_128":
			n = 16
		case spec != "" && spec != "AES_256":
			return nil, errf(400, "InvalidParameter", "The specified parameter \"KeySpec\" is not valid.")
		case p.Get("NumberOfBytes") != "":
			if _, err := fmt.Sscan(p.Get("NumberOfBytes"), &n); err != nil || n < 1 || n > 1024 {
				return nil, errf(400, "InvalidParameter", "The specified parameter \"NumberOfBytes\" is not valid.")
			}
		}
		ec, e := parseContext(p.Get("EncryptionContext"))
		if e != nil {
			return nil, e
		}
		pt := make([]byte, n)
		_, _ = rand.Read(pt)
		v, blob := k.seal(pt, ec)
		return map[string]any{"KeyId": k.id, "KeyVersionId": v, "CiphertextBlob": blob, "Plaintext": base64.StdEncoding.EncodeToString(pt)}, nil
	case "Decrypt":
		ec, e := parseContext(p.Get("EncryptionContext"))
		if e != nil {
			return nil, e
		}
		k, v, pt, e := g.open(p.Get("CiphertextBlob"), ec)
		if e != nil {
			return nil, e
		}
		return map[string]any{"KeyId": k.id, "KeyVersionId": v, "Plaintext": base64.StdEncoding.EncodeToString(pt)}, nil
	case "ReEncrypt":
		src, e := parseContext(p.Get("SourceEncryptionContext"))
		if e != nil {
			return nil, e
		}
		dst, e := parseContext(p.Get("DestinationEncryptionContext"))
		if e != nil {
			return nil, e
		}
		dk, e := g.key(p.Get("DestinationKeyId"), true)
		if e != nil {
			return nil, e
		}
		_, _, pt, e := g.open(p.Get("CiphertextBlob"), src)
		if e != nil {
			return nil, e
		}
		v, blob := dk.seal(pt, dst)
		return map[string]any{"KeyId": dk.id, "KeyVersionId": v, "CiphertextBlob": blob}, nil
	}
	return nil, errf(404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method.")
}

// key finds a key by ID, alias/<name> or ARN; use asks for an enabled one.
func (g *Gateway) key(ref string, use bool) (*gkey, *apiErr) {
	if ref == "" {
		return nil, errf(400, "MissingParameter", "The parameter \"KeyId\" is needed but not provided.")
	}
	if i := strings.LastIndex(ref, ":"); strings.HasPrefix(ref, "acs:kms:") && i > 0 {
		ref = strings.TrimPrefix(ref[i+1:], "key/")
	}
	id := ref
	if strings.HasPrefix(ref, "alias/") {
		var ok bool
		if id, ok = g.aliases[ref]; !ok {
			return nil, errf(404, "Forbidden.AliasNotFound", "The specified Alias is not found.")
		}
	}
	k, ok := g.keys[id]
	if !ok {
		return nil, errf(404, "Forbidden.KeyNotFound", "The specified Key is not found.")
	}
	if use {
		if e := k.usable(); e != nil {
			return nil, e
		}
	}
	return k, nil
}

func (k *gkey) usable() *apiErr {
	switch k.state {
	case "Enabled":
		return nil
	case "PendingDeletion":
		return errf(409, "Rejected.PendingDeletion", "The request was rejected because the key state is PendingDeletion.")
	}
	return errf(409, "Rejected."+k.state, "The request was rejected because the key state is %s.", k.state)
}

// parseContext parses an EncryptionContext: a JSON object of strings, bound in
// its canonical form (json.Marshal sorts the names). "{}" binds nothing.
func parseContext(s string) ([]byte, *apiErr) {
	if s == "" {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, errf(400, "InvalidParameter", "The specified parameter \"EncryptionContext\" is not valid.")
	}
	if len(m) == 0 {
		return nil, nil
	}
	b, _ := json.Marshal(m)
	return b, nil
}

const versionIDLen = 36

// seal encrypts under the primary version: version ID, nonce, AES-GCM
// with the version ID and context as additional data.
func (k *gkey) seal(pt, ec []byte) (string, string) {
	v := k.versions[len(k.versions)-1]
	nonce := make([]byte, v.gcm.NonceSize())
	_, _ = rand.Read(nonce)
	blob := append([]byte(v.id), nonce...)
	blob = v.gcm.Seal(blob, nonce, pt, append([]byte(v.id), ec...))
	return v.id, base64.StdEncoding.EncodeToString(blob)
}

// open decrypts a CiphertextBlob of any key and version.
func (g *Gateway) open(b64 string, ec []byte) (*gkey, string, []byte, *apiErr) {
	blob, err := base64.StdEncoding.DecodeString(b64)
	invalid := errf(400, "InvalidParameter", "The specified parameter \"CiphertextBlob\" or \"EncryptionContext\" is not valid.")
	if err != nil || len(blob) < versionIDLen+12+16 {
		return nil, "", nil, invalid
	}
	vid := string(blob[:versionIDLen])
	k, ok := g.versions[vid]
	if !ok {
		return nil, "", nil, errf(404, "Forbidden.KeyNotFound", "The specified Key is not found.")
	}
	if e := k.usable(); e != nil {
		return nil, "", nil, e
	}
	for _, v := range k.versions {
		if v.id == vid {
			pt, err := v.gcm.Open(nil, blob[versionIDLen:versionIDLen+12], blob[versionIDLen+12:], append([]byte(vid), ec...))
			if err != nil {
				return nil, "", nil, invalid
			}
			return k, vid, pt, nil
		}
	}
	return nil, "", nil, invalid
}
