package kmsfake

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/alibabacloud-go/tea/tea"
	dkmsutil "github.com/aliyun/alibabacloud-dkms-gcs-go-sdk/openapi-util"
	"github.com/aliyun/alibabacloud-dkms-gcs-go-sdk/openapi-util/protobuf/api"
	"google.golang.org/protobuf/proto"
)

// Instance is a fake of a KMS instance's API (dkms-gcs-0.2): protobuf over
// HTTPS (httptest's TLS server on 127.0.0.1, its certificate as the
// instance CA).
//
// It checks: the x-kms-* headers, Date within 15 minutes, Content-Type,
// content-sha256 against the body, the RSA_PKCS1_SHA_256 signature of the
// string to sign (built with the SDK's openapi-util) against the public
// key of the application access point's ClientKey (NewClientKey), and the
// TLS client certificate the SDK presents (when one is presented, it must
// be the ClientKey's); key IDs and aliases, key states; AES_GCM with a
// 12-byte IV and Aad up to 8192 bytes, enforced on Decrypt; the 3 MB body
// limit.
//
// It does not check: the access point's permission policy and network
// rules (every ClientKey may use every key, in every action Deny does not
// refuse it), algorithms other than AES_GCM
// (AES_CBC, SM4, asymmetric keys), AdvanceEncrypt and the other actions,
// key rotation, the instance's QPS (throttling comes only from Faults).
// Its CiphertextBlob is AES-GCM's ciphertext and tag; a hardware
// instance's may differ. The error code for a ciphertext that fails
// authentication is undocumented: the fake answers HTTP 400
// InvalidParameter.
type Instance struct {
	faults
	srv     *httptest.Server
	mu      sync.Mutex
	clients map[string]*x509.Certificate // ClientKey KeyId -> its certificate
	keys    map[string]*ikey
	aliases map[string]string

	clientCerts int
}

// ClientCerts is how many requests came over a connection that presented
// the ClientKey's certificate.
func (s *Instance) ClientCerts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientCerts
}

type ikey struct {
	id, state string
	gcm       cipher.AEAD
}

// NewInstance starts a fake KMS instance.
func NewInstance() *Instance {
	s := &Instance{clients: map[string]*x509.Certificate{}, keys: map[string]*ikey{}, aliases: map[string]string{}}
	s.srv = httptest.NewUnstartedServer(s)
	// The SDK presents the ClientKey's certificate when asked; it is
	// checked against the signing key in authenticate.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some tests are about
	s.srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, Certificates: []tls.Certificate{selfSigned()}}
	s.srv.StartTLS()
	return s
}

// selfSigned is an instance's own certificate for 127.0.0.1, its own CA:
// each fake instance has another, as each real instance has its CA.
func selfSigned() tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kst-fake.cryptoservice.kms.aliyuncs.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Close stops the server.
func (s *Instance) Close() { s.srv.Close() }

// Endpoint is the instance's host:port.
func (s *Instance) Endpoint() string { return strings.TrimPrefix(s.srv.URL, "https://") }

// CACert is the instance's CA certificate, PEM-encoded (the console's
// PrivateKmsCA_kst-....pem).
func (s *Instance) CACert() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
}

// NewClientKey creates an application access point's ClientKey: the JSON
// file the console hands out (KeyId, PrivateKeyData: a PKCS#12 archive
// protected by password).
func (s *Instance) NewClientKey(password string) ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	id := "KAAP." + uuid()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	p12, err := encodePKCS12(key, der, password)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.clients[id] = cert
	s.mu.Unlock()
	return json.Marshal(map[string]string{"KeyId": id, "PrivateKeyData": base64.StdEncoding.EncodeToString(p12)})
}

// CreateKey makes an enabled AES-256 key and returns its ID.
func (s *Instance) CreateKey() string {
	secret := random(32)
	block, _ := aes.NewCipher(secret)
	gcm, _ := cipher.NewGCM(block)
	k := &ikey{id: "key-" + strings.ReplaceAll(uuid(), "-", "")[:20], state: "Enabled", gcm: gcm}
	s.mu.Lock()
	s.keys[k.id] = k
	s.mu.Unlock()
	return k.id
}

// CreateAlias points alias/<name> at a key.
func (s *Instance) CreateAlias(alias, keyID string) {
	s.mu.Lock()
	s.aliases[alias] = keyID
	s.mu.Unlock()
}

// SetKeyState sets a key's state: Enabled, Disabled or PendingDeletion.
func (s *Instance) SetKeyState(keyID, state string) {
	s.mu.Lock()
	s.keys[keyID].state = state
	s.mu.Unlock()
}

const maxInstanceBody = 3 << 20

func (s *Instance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := uuid()
	name, body, principal, e := s.authenticate(r)
	if e == nil && s.isDenied(principal, name) {
		e = errf(403, "Forbidden.NoPermission", "This operation for %q is forbidden by permission system.", name)
	}
	if e == nil {
		switch s.inject(name) {
		case 429:
			e = errf(429, "Rejected.Throttling", "QPS Limit Exceeded")
		case 503:
			e = errf(503, "ServiceUnavailableTemporary", "Service Unavailable Temporary.")
		}
	}
	var out proto.Message
	if e == nil {
		out, e = s.do(name, body, reqID)
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	if e != nil {
		b, _ := proto.Marshal(&api.Error{StatusCode: int32(e.status), ErrorCode: e.code, ErrorMessage: e.message, RequestId: reqID})
		w.WriteHeader(e.status)
		_, _ = w.Write(b)
		return
	}
	b, _ := proto.Marshal(out)
	_, _ = w.Write(b)
}

func (s *Instance) authenticate(r *http.Request) (name string, body []byte, principal string, e *apiErr) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxInstanceBody+1))
	switch {
	case err != nil:
		return "", nil, "", errf(400, "InvalidParameter", "unreadable body")
	case len(body) > maxInstanceBody:
		return "", nil, "", errf(413, "", "")
	}
	h := r.Header.Get
	name = h("x-kms-apiname")
	sum := sha256.Sum256(body)
	switch {
	case h("x-kms-apiversion") != "dkms-gcs-0.2":
		return "", nil, "", errf(400, "InvalidApiVersion", "The ApiVersion %q is invalid.", h("x-kms-apiversion"))
	case name != "Encrypt" && name != "Decrypt" && name != "GenerateDataKey":
		return "", nil, "", errf(400, "InvalidApiName", "The ApiName %q is invalid.", name)
	case h("x-kms-signaturemethod") != "RSA_PKCS1_SHA_256":
		return "", nil, "", errf(400, "InvalidParam", "The Param x-kms-signaturemethod is invalid.")
	case h("x-kms-acccesskeyid") == "":
		return "", nil, "", errf(400, "MissingParameter", "Parameter x-kms-acccesskeyid does not exist in http header or body.")
	case h("Content-Type") != "application/x-protobuf":
		return "", nil, "", errf(415, "InvalidContentType", "Content-Type %q is unsupported.", h("Content-Type"))
	case h("content-sha256") != strings.ToUpper(hex.EncodeToString(sum[:])):
		return "", nil, "", errf(401, "SignatureNotMatch", "Signature is not matched.")
	}
	date, err := http.ParseTime(h("Date"))
	if err != nil {
		return "", nil, "", errf(400, "InvalidParam", "The Param Date is invalid.")
	}
	if time.Since(date).Abs() > 15*time.Minute {
		return "", nil, "", errf(400, "RequestTimeTooSkewed", "Request time exceeds server time more than 15 minutes.")
	}
	s.mu.Lock()
	cert, ok := s.clients[h("x-kms-acccesskeyid")]
	s.mu.Unlock()
	if !ok {
		return "", nil, "", errf(404, "Unauthorized", "The AccessKey ID %q does not exist in our records.", h("x-kms-acccesskeyid"))
	}
	// The SDK's own string to sign, over what arrived.
	headers := map[string]*string{}
	for k, v := range r.Header {
		headers[strings.ToLower(k)] = tea.String(v[0])
	}
	toSign, err := dkmsutil.GetStringToSign(tea.String(r.Method), tea.String(r.URL.Path), headers, nil)
	sig, ok := strings.CutPrefix(h("Authorization"), "Bearer ")
	raw, derr := base64.StdEncoding.DecodeString(sig)
	digest := sha256.Sum256([]byte(tea.StringValue(toSign)))
	if err != nil || !ok || derr != nil || rsa.VerifyPKCS1v15(cert.PublicKey.(*rsa.PublicKey), crypto.SHA256, digest[:], raw) != nil {
		return "", nil, "", errf(401, "SignatureNotMatch", "Signature is not matched.")
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if !bytes.Equal(r.TLS.PeerCertificates[0].Raw, cert.Raw) {
			return "", nil, "", errf(401, "SignatureNotMatch", "The TLS client certificate is not the ClientKey's.")
		}
		s.mu.Lock()
		s.clientCerts++
		s.mu.Unlock()
	}
	return name, body, h("x-kms-acccesskeyid"), nil
}

func (s *Instance) do(name string, body []byte, reqID string) (proto.Message, *apiErr) {
	invalid := errf(400, "InvalidParameter", "The specified parameter is not valid.")
	s.mu.Lock()
	defer s.mu.Unlock()
	switch name {
	case "Encrypt":
		var req api.EncryptRequest
		if proto.Unmarshal(body, &req) != nil || len(req.Plaintext) == 0 || len(req.Aad) > 8192 {
			return nil, invalid
		}
		k, e := s.key(req.KeyId, req.Algorithm)
		if e != nil {
			return nil, e
		}
		iv := random(12)
		return &api.EncryptResponse{KeyId: k.id, CiphertextBlob: k.gcm.Seal(nil, iv, req.Plaintext, req.Aad), Iv: iv, RequestId: reqID, Algorithm: "AES_GCM"}, nil
	case "GenerateDataKey":
		var req api.GenerateDataKeyRequest
		if proto.Unmarshal(body, &req) != nil || len(req.Aad) > 8192 || req.NumberOfBytes < 0 || req.NumberOfBytes > 1024 {
			return nil, invalid
		}
		k, e := s.key(req.KeyId, req.Algorithm)
		if e != nil {
			return nil, e
		}
		n := int(req.NumberOfBytes)
		if n == 0 {
			n = 32
		}
		pt, iv := random(n), random(12)
		return &api.GenerateDataKeyResponse{KeyId: k.id, Iv: iv, Plaintext: pt, CiphertextBlob: k.gcm.Seal(nil, iv, pt, req.Aad), RequestId: reqID, Algorithm: "AES_GCM"}, nil
	case "Decrypt":
		var req api.DecryptRequest
		if proto.Unmarshal(body, &req) != nil {
			return nil, invalid
		}
		if req.KeyId == "" {
			return nil, errf(400, "MissingParameter", "The parameter KeyId is needed but not provided.")
		}
		k, e := s.key(req.KeyId, req.Algorithm)
		if e != nil {
			return nil, e
		}
		if len(req.Iv) != 12 || len(req.Aad) > 8192 {
			return nil, invalid
		}
		pt, err := k.gcm.Open(nil, req.Iv, req.CiphertextBlob, req.Aad)
		if err != nil {
			return nil, invalid
		}
		return &api.DecryptResponse{KeyId: k.id, Plaintext: pt, RequestId: reqID, Algorithm: "AES_GCM"}, nil
	}
	return nil, errf(400, "InvalidApiName", "The ApiName %q is invalid.", name)
}

func (s *Instance) key(ref, algorithm string) (*ikey, *apiErr) {
	if algorithm != "" && algorithm != "AES_GCM" {
		return nil, errf(400, "InvalidParameter", "The specified parameter Algorithm is not valid.")
	}
	id := ref
	if strings.HasPrefix(ref, "alias/") {
		id = s.aliases[ref]
	}
	k, ok := s.keys[id]
	if !ok {
		return nil, errf(404, "Forbidden.KeyNotFound", "The key Key ID or Alias does not exist in the system.")
	}
	if e := k.usable(); e != nil {
		return nil, e
	}
	return k, nil
}

func (k *ikey) usable() *apiErr { return (&gkey{state: k.state}).usable() }
