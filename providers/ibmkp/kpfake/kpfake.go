// Package kpfake is a FAKE of IBM Key Protect / Hyper Protect Crypto
// Services' key actions and of IBM Cloud IAM's token endpoint, for tests:
// IBM's services cannot run on one machine. It serves, on 127.0.0.1:
//
//   - POST /identity/token: form grant_type=urn:ibm:params:oauth:grant-type:apikey
//     and apikey; answers access_token, token_type, expires_in and
//     expiration, or IAM's error body (errorCode BXNIM0415E, HTTP 400) for
//     an unknown API key;
//   - GET /api/v2/keys/{id}/metadata and POST /api/v2/keys/{id}/actions/{wrap,unwrap,rewrap}
//     with Key Protect's request and response bodies and error envelope.
//
// Key requests must carry "Authorization: Bearer <token>" with a token it
// issued and that has not expired or been revoked, and the API key behind
// it must be granted the instance in bluemix-instance (else 401, as Key
// Protect answers); the key must belong to that instance and to the
// x-kms-key-ring when one is sent (else 404). Action bodies must be sent
// as application/vnd.ibm.kms.key_action+json and hold only the documented
// fields. Keys live in memory, with versions: Rotate adds one; wrap uses
// the latest; unwrap of an older version's ciphertext also answers the
// ciphertext under the latest (rewrappedKeyVersion), and rewrap moves a
// ciphertext to it. A ciphertext is base64 of the JSON Key Protect's look
// like ({"ciphertext","iv","version","handle"}), sealed with AES-256-GCM
// under the version's key over the AAD list, the version ID and the key
// ID: a wrong key, a wrong AAD or any changed byte is refused (422
// UNPROCESSABLE_CIPHERTEXT_ERR; malformed base64 or JSON: 400
// INVALID_FIELD_ERR). Key states follow Key Protect's table: wrap needs
// an active key (1), unwrap and rewrap an active or deactivated one (3);
// otherwise 409 KEY_ACTION_INVALID_STATE_ERR, or 400 KEY_EXPIRED_ERR for
// a wrap with a deactivated key. Faults (429, 503, slow answers) are
// injected at a rate, or for the next n requests of an action.
//
// What it does not check or do: IAM tokens are opaque strings, not JWTs,
// and carry no IAM policy beyond the instances an API key is granted (no
// service roles or key-level policies); no refresh tokens, key creation
// API, aliases, key rings other than by name, registrations, dual
// authorization, rotation rate limits, instance policies or allowed
// networks; the error bodies of 404, 429 and 5xx are Key Protect's
// envelope with a message of the fake's own (IBM documents no reason code
// for them), and actions on a deleted key answer 409 (the service may
// answer 410); the real service's AAD serialization, plaintext size limits
// and ciphertext format are not known, so the fake's (injective AAD
// encoding, 1 to 4096 bytes, its own sealed JSON) may accept or refuse
// where the service differs; its content-type check is stricter than the
// service appears to be (IBM's Go client sends none); it does not send
// Retry-After; and it speaks plain HTTP, not TLS.
package kpfake

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// Key states (Key Protect's integer mapping).
const (
	Active      = 1
	Suspended   = 2
	Deactivated = 3
	Destroyed   = 5
)

// Faults are injected into key requests (not into IAM's; see FailNext).
type Faults struct {
	Throttle    float64       // share answered 429
	ServerError float64       // share answered 503
	Slow        float64       // share delayed by Delay before being served
	Delay       time.Duration // how long a slow answer waits
}

// Stats counts what the fake saw.
type Stats struct {
	Tokens       int // tokens issued
	Requests     int // key requests
	Unauthorized int // key requests answered 401
	Throttled    int // 429s injected
	ServerErrors int // 5xx injected
	// APIKeyLeaks counts key requests whose headers or body held an API
	// key: API keys go to IAM only.
	APIKeyLeaks int
}

// Server is a running fake.
type Server struct {
	// URL serves both Key Protect (as endpoint=) and IAM (as
	// iam-endpoint=URL+"/identity/token").
	URL string

	mu       sync.Mutex
	apiKeys  map[string][]string // API key -> instances (none: all)
	tokens   map[string]token
	ttl      time.Duration
	keys     map[string]*key
	faults   Faults
	failNext map[string][]int
	rng      *mrand.Rand
	stats    Stats
}

type token struct {
	apiKey string
	expiry time.Time
}

type key struct {
	id, instance, ring string
	state              int
	versions           []version // oldest first
}

type version struct {
	id   string
	aead cipher.AEAD
}

// New starts a fake on 127.0.0.1, stopped when tb ends. Tokens live an
// hour unless SetTokenTTL says otherwise; faults are drawn from a fixed
// seed, so a sequential test sees the same ones every run.
func New(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{
		apiKeys:  map[string][]string{},
		tokens:   map[string]token{},
		ttl:      time.Hour,
		keys:     map[string]*key{},
		failNext: map[string][]int{},
		rng:      mrand.New(mrand.NewPCG(1, 2)),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /identity/token", s.token)
	mux.HandleFunc("GET /api/v2/keys/{id}/metadata", s.keyRequest)
	mux.HandleFunc("POST /api/v2/keys/{id}/actions/{action}", s.keyRequest)
	srv := httptest.NewServer(mux)
	tb.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// IAMEndpoint is the fake's token URL.
func (s *Server) IAMEndpoint() string { return s.URL + "/identity/token" }

// AddAPIKey accepts apiKey at the token endpoint, for the given instances
// (none: every instance).
func (s *Server) AddAPIKey(apiKey string, instances ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKeys[apiKey] = instances
}

// CreateKey creates an active root key in instance (key ring "default")
// and returns its ID.
func (s *Server) CreateKey(instance string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := &key{id: uuid(), instance: instance, ring: "default", state: Active}
	k.versions = []version{newVersion()}
	s.keys[k.id] = k
	return k.id
}

// Rotate gives the key new key material (a new latest version) and
// returns the version's ID. Older versions keep unwrapping.
func (s *Server) Rotate(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.mustKey(id)
	k.versions = append(k.versions, newVersion())
	return k.versions[len(k.versions)-1].id
}

// SetState sets the key's state (Active, Suspended, Deactivated,
// Destroyed).
func (s *Server) SetState(id string, state int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustKey(id).state = state
}

// SetKeyRing moves the key to another key ring.
func (s *Server) SetKeyRing(id, ring string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustKey(id).ring = ring
}

// SetTokenTTL sets the lifetime of tokens issued from now on (at least a
// second: expires_in counts seconds).
func (s *Server) SetTokenTTL(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ttl = max(d, time.Second)
}

// RevokeTokens invalidates every token issued so far.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// SetFaults sets the faults injected into key requests from now on.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// FailNext answers the next n requests of action ("token", "metadata",
// "wrap", "unwrap" or "rewrap") with HTTP status.
func (s *Server) FailNext(action string, status, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.failNext[action] = append(s.failNext[action], status)
	}
}

// Stats returns the counters so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *Server) mustKey(id string) *key {
	k := s.keys[id]
	if k == nil {
		panic("kpfake: no key " + id)
	}
	return k
}

func newVersion() version {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	block, _ := aes.NewCipher(b)
	aead, _ := cipher.NewGCM(block)
	return version{id: uuid(), aead: aead}
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// injected pops a FailNext status for action, or draws a fault; it
// returns 0, or the status to answer. Slow answers sleep here, outside
// the lock.
func (s *Server) injected(action string, faults bool) int {
	s.mu.Lock()
	if q := s.failNext[action]; len(q) > 0 {
		s.failNext[action] = q[1:]
		s.count(q[0])
		s.mu.Unlock()
		return q[0]
	}
	var status int
	var delay time.Duration
	if faults {
		f := s.faults
		switch r := s.rng.Float64(); {
		case r < f.Throttle:
			status = http.StatusTooManyRequests
		case r < f.Throttle+f.ServerError:
			status = http.StatusServiceUnavailable
		}
		if f.Slow > 0 && s.rng.Float64() < f.Slow {
			delay = f.Delay
		}
		s.count(status)
	}
	s.mu.Unlock()
	time.Sleep(delay)
	return status
}

func (s *Server) count(status int) {
	switch {
	case status == http.StatusTooManyRequests:
		s.stats.Throttled++
	case status >= 500:
		s.stats.ServerErrors++
	}
}

// token is IAM's POST /identity/token.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if st := s.injected("token", false); st != 0 {
		iamError(w, st, "KPFAKE_INJECTED", "injected failure")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		iamError(w, http.StatusBadRequest, "KPFAKE_BAD_CONTENT_TYPE", "want a form")
		return
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey" {
		iamError(w, http.StatusBadRequest, "KPFAKE_BAD_GRANT", "want grant_type urn:ibm:params:oauth:grant-type:apikey")
		return
	}
	s.mu.Lock()
	apiKey := r.PostForm.Get("apikey")
	if _, ok := s.apiKeys[apiKey]; !ok || apiKey == "" {
		s.mu.Unlock()
		iamError(w, http.StatusBadRequest, "BXNIM0415E", "Provided API key could not be found")
		return
	}
	tok := "kpfake." + uuid()
	now := time.Now()
	s.tokens[tok] = token{apiKey: apiKey, expiry: now.Add(s.ttl)}
	ttl := s.ttl
	s.stats.Tokens++
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":  tok,
		"refresh_token": "not_supported",
		"token_type":    "Bearer",
		"expires_in":    int64(ttl / time.Second),
		"expiration":    now.Add(ttl).Unix(),
		"scope":         "ibm openid",
	})
}

func iamError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{
		"errorCode":    code,
		"errorMessage": msg,
		"context":      map[string]string{"requestId": uuid()},
	})
}

// kpError answers Key Protect's error envelope; code "" leaves out the
// reasons (for answers whose reason code IBM does not document).
func kpError(w http.ResponseWriter, status int, msg, code, reason string) {
	res := map[string]any{"errorMsg": msg}
	if code != "" {
		res["reasons"] = []map[string]any{{
			"code": code, "message": reason, "status": status,
			"moreInfo": "https://cloud.ibm.com/apidocs/key-protect",
		}}
	}
	writeJSON(w, status, map[string]any{
		"metadata":  map[string]any{"collectionType": "application/vnd.ibm.kms.error+json", "collectionTotal": 1},
		"resources": []any{res},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

const maxBody = 64 << 10

func (s *Server) keyRequest(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if r.Method == http.MethodGet {
		action = "metadata"
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		kpError(w, http.StatusBadRequest, "Bad Request: body too large or unreadable", "BAD_BODY_ERR", "Invalid body data was passed")
		return
	}
	s.mu.Lock()
	s.stats.Requests++
	for k := range s.apiKeys {
		if k == "" {
			continue
		}
		if bytes.Contains(body, []byte(k)) || strings.Contains(fmt.Sprint(r.Header), k) || strings.Contains(r.URL.String(), k) {
			s.stats.APIKeyLeaks++
		}
	}
	s.mu.Unlock()
	switch st := s.injected(action, true); {
	case st == http.StatusTooManyRequests:
		kpError(w, st, "Too Many Requests: the rate limit of the instance was exceeded (kpfake)", "", "")
		return
	case st != 0:
		kpError(w, st, http.StatusText(st)+" (kpfake)", "", "")
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.authorize(w, r)
	if !ok {
		return
	}
	switch action {
	case "metadata":
		s.metadata(w, k)
		return
	case "wrap", "unwrap", "rewrap":
	default:
		kpError(w, http.StatusBadRequest, "Bad Request: unsupported action "+action+" (kpfake)", "", "")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/vnd.ibm.kms.key_action+json" {
		kpError(w, http.StatusUnsupportedMediaType, "Unsupported Media Type: want application/vnd.ibm.kms.key_action+json (kpfake)", "", "")
		return
	}
	var req struct {
		Plaintext  *string  `json:"plaintext"`
		Ciphertext *string  `json:"ciphertext"`
		AAD        []string `json:"aad"`
	}
	if len(body) == 0 && action == "wrap" {
		body = []byte("{}") // Key Protect takes an empty wrap body as "generate a DEK"
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || (action == "wrap") != (req.Ciphertext == nil) || (action != "wrap" && req.Plaintext != nil) {
		kpError(w, http.StatusBadRequest, "Bad Request: Action could not be performed on key: Please see `reasons` for more details (BAD_BODY_ERR)", "BAD_BODY_ERR",
			"Invalid body data was passed: Please ensure the data passed had valid formatting with no invalid characters")
		return
	}
	for _, a := range req.AAD {
		if utf8.RuneCountInString(a) > 255 {
			invalidField(w, "aad", "strings of at most 255 characters")
			return
		}
	}
	if !stateAllows(w, k, action) {
		return
	}
	switch action {
	case "wrap":
		var pt []byte
		if req.Plaintext == nil {
			pt = make([]byte, 32)
			_, _ = rand.Read(pt)
		} else if pt, err = base64.StdEncoding.Strict().DecodeString(*req.Plaintext); err != nil || len(pt) == 0 || len(pt) > 4096 {
			invalidField(w, "plaintext", "a base64 encoded key material")
			return
		}
		v := k.versions[len(k.versions)-1]
		res := map[string]any{"ciphertext": seal(k, v, pt, req.AAD), "keyVersion": map[string]string{"id": v.id}}
		if req.Plaintext == nil {
			res["plaintext"] = base64.StdEncoding.EncodeToString(pt)
		}
		writeJSON(w, http.StatusOK, res)
	case "unwrap", "rewrap":
		pt, v, status := open(k, *req.Ciphertext, req.AAD)
		switch status {
		case http.StatusBadRequest:
			invalidField(w, "ciphertext", "the original base64 encoded ciphertext from the wrap operation")
			return
		case http.StatusUnprocessableEntity:
			kpError(w, status, "Unprocessable Entity: "+strings.ToUpper(action[:1])+action[1:]+" with key could not be performed: Please see `reasons` for more details (UNPROCESSABLE_CIPHERTEXT_ERR)",
				"UNPROCESSABLE_CIPHERTEXT_ERR", "The provided ciphertext is invalid or corrupted")
			return
		}
		latest := k.versions[len(k.versions)-1]
		res := map[string]any{"keyVersion": map[string]string{"id": v.id}}
		if action == "unwrap" {
			res["plaintext"] = base64.StdEncoding.EncodeToString(pt)
		}
		if action == "rewrap" || v.id != latest.id {
			res["ciphertext"] = seal(k, latest, pt, req.AAD)
			res["rewrappedKeyVersion"] = map[string]string{"id": latest.id}
		}
		writeJSON(w, http.StatusOK, res)
	}
}

// authorize checks the token, the instance and the key (s.mu held).
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (*key, bool) {
	unauthorized := func() (*key, bool) {
		s.stats.Unauthorized++
		kpError(w, http.StatusUnauthorized, "Unauthorized: The user does not have access to the specified resource", "", "")
		return nil, false
	}
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	t, known := s.tokens[bearer]
	if !ok || !known || time.Now().After(t.expiry) {
		return unauthorized()
	}
	instance := r.Header.Get("bluemix-instance")
	if instance == "" {
		kpError(w, http.StatusBadRequest, "Bad Request: the bluemix-instance header is required (kpfake)", "", "")
		return nil, false
	}
	if granted := s.apiKeys[t.apiKey]; len(granted) > 0 && !contains(granted, instance) {
		return unauthorized()
	}
	k := s.keys[r.PathValue("id")]
	if k == nil || k.instance != instance || (r.Header.Get("x-kms-key-ring") != "" && r.Header.Get("x-kms-key-ring") != k.ring) {
		kpError(w, http.StatusNotFound, "Not Found: Key could not be found in this instance (kpfake)", "", "")
		return nil, false
	}
	return k, true
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func stateAllows(w http.ResponseWriter, k *key, action string) bool {
	switch {
	case k.state == Active:
		return true
	case k.state == Deactivated && action == "wrap":
		kpError(w, http.StatusBadRequest, "Bad Request: Wrap with key could not be performed: Please see `reasons` for more details (KEY_EXPIRED_ERR)",
			"KEY_EXPIRED_ERR", "The action could not be performed on the key because the key is expired")
		return false
	case k.state == Deactivated:
		return true
	}
	kpError(w, http.StatusConflict, "Conflict: Key is not in active state: Action could not be performed on key. Please see `reasons` for more details.",
		"KEY_ACTION_INVALID_STATE_ERR", "Key is not in a valid state")
	return false
}

func invalidField(w http.ResponseWriter, field, must string) {
	kpError(w, http.StatusBadRequest, "Bad Request: Action could not be performed on key: Please see `reasons` for more details (INVALID_FIELD_ERR)",
		"INVALID_FIELD_ERR", "The field '"+field+"' must be: "+must)
}

func (s *Server) metadata(w http.ResponseWriter, k *key) {
	latest := k.versions[len(k.versions)-1]
	writeJSON(w, http.StatusOK, map[string]any{
		"metadata": map[string]any{"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": 1},
		"resources": []map[string]any{{
			"type": "application/vnd.ibm.kms.key+json", "id": k.id, "name": "kpfake-" + k.id[:8],
			"state": k.state, "extractable": false, "keyRingID": k.ring, "deleted": k.state == Destroyed,
			"crn":        "crn:v1:bluemix:public:kms:kpfake:a/kpfake:" + k.instance + ":key:" + k.id,
			"keyVersion": map[string]string{"id": latest.id},
		}},
	})
}

// sealed is the inside of a ciphertext, laid out as Key Protect's.
type sealed struct {
	Ciphertext string `json:"ciphertext"`
	IV         string `json:"iv"`
	Version    string `json:"version"`
	Handle     string `json:"handle"`
}

const format = "4.0.0"

// gcmAAD binds a ciphertext to its AAD list (length-prefixed, so no two
// lists share an encoding), its format, version and key.
func gcmAAD(k *key, v version, aad []string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(aad)))
	for _, s := range append(append([]string{}, aad...), format, v.id, k.id) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

func seal(k *key, v version, pt []byte, aad []string) string {
	iv := make([]byte, 12)
	_, _ = rand.Read(iv)
	ct := v.aead.Seal(nil, iv, pt, gcmAAD(k, v, aad))
	j, _ := json.Marshal(sealed{
		Ciphertext: base64.StdEncoding.EncodeToString(ct),
		IV:         base64.StdEncoding.EncodeToString(iv),
		Version:    format,
		Handle:     v.id,
	})
	return base64.StdEncoding.EncodeToString(j)
}

// open returns the plaintext and the version that sealed it, or the
// status to answer: 400 for what is not a ciphertext at all, 422 for one
// that does not open with this key and AAD.
func open(k *key, ciphertext string, aad []string) ([]byte, version, int) {
	raw, err := base64.StdEncoding.Strict().DecodeString(ciphertext)
	if err != nil {
		return nil, version{}, http.StatusBadRequest
	}
	var sd sealed
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if dec.Decode(&sd) != nil {
		return nil, version{}, http.StatusBadRequest
	}
	// One spelling only: encoding/json matches names regardless of case
	// and skips white space, which would let a changed byte through.
	if again, _ := json.Marshal(sd); !bytes.Equal(again, raw) {
		return nil, version{}, http.StatusBadRequest
	}
	ct, err1 := base64.StdEncoding.Strict().DecodeString(sd.Ciphertext)
	iv, err2 := base64.StdEncoding.Strict().DecodeString(sd.IV)
	if err1 != nil || err2 != nil || len(iv) != 12 {
		return nil, version{}, http.StatusBadRequest
	}
	if sd.Version != format {
		return nil, version{}, http.StatusUnprocessableEntity
	}
	for _, v := range k.versions {
		if v.id == sd.Handle {
			pt, err := v.aead.Open(nil, iv, ct, gcmAAD(k, v, aad))
			if err != nil {
				return nil, version{}, http.StatusUnprocessableEntity
			}
			return pt, v, http.StatusOK
		}
	}
	return nil, version{}, http.StatusUnprocessableEntity
}
