//go:build linux

// Package localkms starts local-kms (github.com/nsmithuk/local-kms), a
// real AWS KMS emulator, for tests: one server per Start, seeded with two
// symmetric keys and their aliases, stopped when the test ends. Tests
// import it; so does the benchmark (jobs/rekey-bench), which starts the
// same server with Run and stops it with Close. Nothing rekey ships does.
//
// local-kms listens on every interface and has no option to choose one.
// So it runs in a private network namespace whose only interface is its
// own loopback: Start re-executes the current binary as a small bridge
// (this package's init takes over when REKEY_LOCALKMS_BRIDGE is set),
// which brings up that loopback, starts local-kms there and forwards a
// unix socket to it. In the test's process, an HTTP proxy on 127.0.0.1
// forwards to that socket: Endpoint. Nothing outside this machine can
// reach the emulator.
//
// The proxy adds one check local-kms lacks, as documented for AWS KMS: a
// Decrypt or ReEncrypt whose KeyId (SourceKeyId) is not the key named in
// the ciphertext is answered with IncorrectKeyException, and a ciphertext
// too short to hold its header with InvalidCiphertextException. (local-kms
// decrypts with whichever key the request names without authenticating
// the key ARN in its ciphertext header, and panics on some short ones.)
// It can also answer a share of the requests with throttling (Throttle),
// as an overloaded KMS does.
//
// Start sets fake AWS credentials and clears the AWS configuration of the
// environment for the test (t.Setenv: not for parallel tests); local-kms
// accepts any credentials. The shared config files hold one profile,
// Profile, with the same credentials. Run changes no environment: its
// caller opts in with Setenv (this process and its later children) or
// Environ (one child).
//
// The binary is found by Binary (`make local-kms` installs it). Without
// it the test skips, or fails when CI is set.
//
// Limits of the emulator (what real AWS KMS checks and it does not):
// signatures and credentials, IAM and key policies (no AccessDenied),
// grants, DryRun, cross-account keys (one account and region per server),
// request quotas (no throttling but Throttle's). Its encryption context
// binding concatenates sorted keys and values without separators, so
// {"a": "bc"} and {"ab": "c"} are the same context to it.
package localkms

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// Version is the local-kms release the tests are written against.
const Version = "v0.0.0-20260228092603-2a5e92d09ab6"

// Install is the command that installs it.
const Install = "go install github.com/nsmithuk/local-kms@" + Version

// Seeded key names, for KeyURI and KeyARN. Each has an alias
// "alias/rekey-test-1" and "alias/rekey-test-2".
const (
	Key1 = "key-1"
	Key2 = "key-2"
)

var seeded = map[string]string{
	Key1: "0a1b2c3d-0000-4000-8000-000000000001",
	Key2: "0a1b2c3d-0000-4000-8000-000000000002",
}

// Credentials and profile Start puts in the environment.
const (
	AccessKeyID     = "AKIALOCALKMSTEST0001"
	SecretAccessKey = "localkms-test-secret-do-not-log"
	Profile         = "localkms"
)

// Server is a running local-kms.
type Server struct {
	region, account string
	endpoint        string

	dir       string   // Run's folder (AWS config files); empty for Start
	closers   []func() // what Close stops, in reverse order
	closeOnce sync.Once

	mu        sync.Mutex
	throttle  float64
	rng       *rand.Rand
	requests  int
	throttled int
	arns      map[string]string // key ids resolved by checkKey
}

// Option configures Start.
type Option func(*Server)

// Region sets the server's region (default eu-west-1).
func Region(r string) Option { return func(s *Server) { s.region = r } }

// Account sets the server's AWS account (default 111122223333).
func Account(a string) Option { return func(s *Server) { s.account = a } }

// Start starts a local-kms for t and stops it when t ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := newServer(opts)
	bin, ok := Binary()
	if !ok {
		missing(t, "local-kms", "run `make local-kms`, or "+Install)
	}
	dir := t.TempDir()
	setEnv(t, dir)
	err := s.launch(context.Background(), bin, dir)
	if errors.Is(err, ErrNoNamespace) {
		missing(t, "a private network namespace for local-kms", err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Run starts a local-kms for a command (the benchmark), not a test: the
// same server, namespace and proxy as Start, with its seed, data, log
// (local-kms.log) and shared AWS config files in dir (a new temporary
// folder when dir is empty, removed by Close). Unlike Start it leaves
// the environment alone: Setenv or Environ point the SDK's default chain
// at the server's fake credentials. Close stops it. It fails with
// ErrNoBinary when local-kms is not installed, and with an error wrapping
// ErrNoNamespace when no private network namespace can be made.
func Run(ctx context.Context, dir string, opts ...Option) (*Server, error) {
	s := newServer(opts)
	bin, ok := Binary()
	if !ok {
		return nil, fmt.Errorf("%w (run `make local-kms`, or %s)", ErrNoBinary, Install)
	}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "localkms")
		if err != nil {
			return nil, err
		}
		dir = tmp
		s.closers = append(s.closers, func() { os.RemoveAll(tmp) })
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := writeAWSFiles(dir); err != nil {
		s.Close()
		return nil, err
	}
	s.dir = dir
	if err := s.launch(ctx, bin, dir); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// ErrNoBinary: local-kms is not installed (see Binary).
var ErrNoBinary = errors.New("local-kms is not installed")

// ErrNoNamespace: this process may not create a private network namespace
// for local-kms.
var ErrNoNamespace = errors.New("no private network namespace for local-kms")

func newServer(opts []Option) *Server {
	s := &Server{region: "eu-west-1", account: "111122223333", rng: rand.New(rand.NewPCG(12, 34)), arns: map[string]string{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Close stops the proxy and local-kms and removes what Run made. It may be
// called more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		for i := len(s.closers) - 1; i >= 0; i-- {
			s.closers[i]()
		}
	})
	return nil
}

// launch starts the bridge (and local-kms in it) with its files in dir,
// then the proxy. On an error, what was started is stopped again.
func (s *Server) launch(ctx context.Context, bin, dir string) (err error) {
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// A unix socket path must be short (108 bytes): not under dir.
	sockDir, err := os.MkdirTemp("", "lkms")
	if err != nil {
		return err
	}
	s.closers = append(s.closers, func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "kms.sock")
	seed := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seed, []byte(seedYAML()), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "local-kms.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	stdin, toBridge, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), bridgeEnv+"=1", binEnv+"="+bin, sockEnv+"="+sock,
		"KMS_REGION="+s.region, "KMS_ACCOUNT_ID="+s.account, "KMS_SEED_PATH="+seed,
		"KMS_DATA_PATH="+filepath.Join(dir, "data"))
	cmd.Stdin, cmd.Stderr = stdin, logf
	ready, err := cmd.StdoutPipe()
	if err != nil {
		stdin.Close()
		toBridge.Close()
		return err
	}
	if err := startIsolated(cmd); err != nil {
		stdin.Close()
		toBridge.Close()
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EACCES) {
			return fmt.Errorf("%w: %v: allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run as root", ErrNoNamespace, err)
		}
		return fmt.Errorf("start the local-kms bridge: %v", err)
	}
	stdin.Close()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.closers = append(s.closers, func() {
		toBridge.Close() // the bridge stops local-kms and exits
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(ready).ReadString('\n')
		line <- l
		_, _ = io.Copy(io.Discard, ready)
	}()
	select {
	case l := <-line:
		if strings.TrimSpace(l) != "ready" {
			<-exited
			return fmt.Errorf("local-kms did not start:\n%s", readLog(logPath))
		}
	case <-time.After(30 * time.Second):
		return fmt.Errorf("local-kms did not start in 30 s:\n%s", readLog(logPath))
	case <-ctx.Done():
		return fmt.Errorf("local-kms: %w", ctx.Err())
	}
	s.endpoint, err = s.serve(sock)
	return err
}

// startIsolated starts cmd in a new network namespace: as root directly,
// otherwise inside a new user namespace too (which maps the user to root
// there, who may bring the loopback up).
func startIsolated(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() != 0 {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
	}
	return cmd.Start()
}

func readLog(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// missing skips the test, or fails it when CI is set: CI must run every
// test.
func missing(t testing.TB, what, how string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing and CI is set, so this test may not skip: %s", what, how)
	}
	t.Skipf("%s is missing (%s); skipping", what, how)
}

// Binary returns local-kms's path: $REKEY_LOCAL_KMS, then
// $(go env GOPATH)/bin/local-kms, then ~/.cache/rekey/local-kms-<Version>/
// (where `make local-kms` puts it), then PATH.
func Binary() (string, bool) {
	if p := os.Getenv("REKEY_LOCAL_KMS"); p != "" {
		_, err := os.Stat(p)
		return p, err == nil
	}
	var cands []string
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	if gopath != "" {
		cands = append(cands, filepath.Join(filepath.SplitList(gopath)[0], "bin", "local-kms"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		cands = append(cands, filepath.Join(home, ".cache", "rekey", "local-kms-"+Version, "local-kms"))
	}
	for _, c := range cands {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c, true
		}
	}
	p, err := exec.LookPath("local-kms")
	return p, err == nil
}

// setEnv gives the test fake credentials and a profile, and clears every
// AWS setting of the environment that could reach a real account.
func setEnv(t testing.TB, dir string) {
	if err := writeAWSFiles(dir); err != nil {
		t.Fatal(err)
	}
	for k, v := range awsEnv(dir) {
		t.Setenv(k, v)
	}
	for _, k := range clearedEnv {
		t.Setenv(k, "") // restored at the end of the test
		os.Unsetenv(k)
	}
}

// writeAWSFiles writes the shared config and credentials files (profile
// Profile, the fake credentials) into dir.
func writeAWSFiles(dir string) error {
	cfgFile, credFile := filepath.Join(dir, "aws-config"), filepath.Join(dir, "aws-credentials")
	for path, body := range map[string]string{
		cfgFile:  "[profile " + Profile + "]\n",
		credFile: "[" + Profile + "]\naws_access_key_id = " + AccessKeyID + "\naws_secret_access_key = " + SecretAccessKey + "\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// awsEnv is what points the SDK's default chain at the fake credentials and
// the files of writeAWSFiles in dir.
func awsEnv(dir string) map[string]string {
	return map[string]string{
		"AWS_ACCESS_KEY_ID": AccessKeyID, "AWS_SECRET_ACCESS_KEY": SecretAccessKey,
		"AWS_CONFIG_FILE": filepath.Join(dir, "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "aws-credentials"),
		"AWS_EC2_METADATA_DISABLED": "true",
	}
}

// clearedEnv are the AWS settings that could reach a real account.
var clearedEnv = []string{"AWS_CA_BUNDLE", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
	"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
	"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"}

// Setenv points this process, and the processes it starts afterwards, at
// the server of Run: the fake credentials and a shared config with the
// profile Profile, every other AWS setting that could reach a real account
// removed. For commands; tests get this from Start.
func (s *Server) Setenv() error {
	if s.dir == "" {
		return errors.New("localkms: Setenv is for servers started by Run (Start sets the test's environment itself)")
	}
	for _, k := range clearedEnv {
		if err := os.Unsetenv(k); err != nil {
			return err
		}
	}
	for k, v := range awsEnv(s.dir) {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	return nil
}

// Environ is base (e.g. os.Environ()) with the AWS settings of Setenv, for
// a child process of a server started by Run.
func (s *Server) Environ(base []string) []string {
	set := awsEnv(s.dir)
	var out []string
	for _, e := range base {
		k, _, _ := strings.Cut(e, "=")
		if _, ok := set[k]; ok || slices.Contains(clearedEnv, k) {
			continue
		}
		out = append(out, e)
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

func seedYAML() string {
	var b strings.Builder
	b.WriteString("Keys:\n  Symmetric:\n    Aes:\n")
	for _, name := range []string{Key1, Key2} {
		key := make([]byte, 32)
		_, _ = crand.Read(key)
		fmt.Fprintf(&b, "      - Metadata:\n          KeyId: %s\n          Description: rekey test %s\n        BackingKeys:\n          - %s\n", seeded[name], name, hex.EncodeToString(key))
	}
	b.WriteString("Aliases:\n")
	for i, name := range []string{Key1, Key2} {
		fmt.Fprintf(&b, "  - AliasName: alias/rekey-test-%d\n    TargetKeyId: %s\n", i+1, seeded[name])
	}
	return b.String()
}

// Endpoint is the server's URL on 127.0.0.1.
func (s *Server) Endpoint() string { return s.endpoint }

// Region is the server's region.
func (s *Server) Region() string { return s.region }

// Account is the server's AWS account.
func (s *Server) Account() string { return s.account }

// KeyARN is the ARN of a seeded key (Key1, Key2) or of a key id.
func (s *Server) KeyARN(name string) string {
	id := name
	if v, ok := seeded[name]; ok {
		id = v
	}
	return "arn:aws:kms:" + s.region + ":" + s.account + ":key/" + id
}

// KeyURI is an awskms: reference to a key on this server: a seeded key
// (Key1, Key2) or a key id by its ARN, an "alias/..." by its alias.
func (s *Server) KeyURI(name string) string {
	ep := "endpoint=" + url.QueryEscape(s.endpoint)
	if strings.HasPrefix(name, "alias/") {
		return "awskms:" + name + "?region=" + s.region + "&" + ep
	}
	return "awskms:" + s.KeyARN(name) + "?" + ep
}

// Client is a KMS client of this server, for fixtures (CreateKey,
// DisableKey).
func (s *Server) Client() *kms.Client {
	return kms.New(kms.Options{
		Region: s.region, BaseEndpoint: aws.String(s.endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(AccessKeyID, SecretAccessKey, ""),
	})
}

// Throttle makes the proxy answer this share (0 to 1) of the
// cryptographic requests (Encrypt, Decrypt, ReEncrypt, GenerateDataKey*,
// GenerateRandom) with AWS KMS's throttling answer: HTTP 400,
// ThrottlingException. The choice is pseudo-random with a fixed seed.
func (s *Server) Throttle(share float64) {
	s.mu.Lock()
	s.throttle = share
	s.mu.Unlock()
}

// Counts returns how many cryptographic requests the proxy saw, and how
// many of them it throttled.
func (s *Server) Counts() (requests, throttled int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, s.throttled
}

// ThrottlingBody is the JSON body of AWS KMS's throttling answer.
const ThrottlingBody = `{"__type":"ThrottlingException","message":"You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."}`

func (s *Server) serve(sock string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 256,
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: "local-kms"})
			r.Out.Host = r.In.Host
		},
		Transport: tr,
		// local-kms dropped the connection (a panic): drop the client's,
		// as a client talking to it directly would see.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, op, _ := strings.Cut(r.Header.Get("X-Amz-Target"), ".")
		code := ""
		switch {
		case s.throttleNow(op):
			code = "ThrottlingException"
		case op == "Decrypt" || op == "ReEncrypt":
			code = s.checkKey(r, tr, op)
		}
		if code != "" {
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.Header().Set("X-Amzn-Requestid", "localkms-proxy")
			w.WriteHeader(http.StatusBadRequest)
			body := `{"__type":"` + code + `"}`
			if code == "ThrottlingException" {
				body = ThrottlingBody
			}
			_, _ = io.WriteString(w, body)
			return
		}
		proxy.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }()
	s.closers = append(s.closers, func() {
		_ = srv.Close()
		tr.CloseIdleConnections()
	})
	return "http://" + l.Addr().String(), nil
}

func (s *Server) throttleNow(op string) bool {
	switch op {
	case "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GenerateRandom":
	default:
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if s.throttle > 0 && s.rng.Float64() < s.throttle {
		s.throttled++
		return true
	}
	return false
}

// checkKey adds the check local-kms lacks to Decrypt and ReEncrypt: the
// key the request names (KeyId, SourceKeyId) must be the key named in
// the ciphertext, or AWS KMS answers IncorrectKeyException. local-kms
// decrypts with the key the request names and never authenticates the
// key ARN it writes in front of its ciphertexts, so without this a
// damaged ARN would go unnoticed; and it panics on some lengths, where
// AWS answers InvalidCiphertextException. It returns the error code to
// answer with, or "" to pass the request on. r.Body is restored.
func (s *Server) checkKey(r *http.Request, tr http.RoundTripper, op string) string {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<22))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return ""
	}
	var in struct {
		KeyId          string
		SourceKeyId    string
		CiphertextBlob []byte
	}
	if json.Unmarshal(body, &in) != nil || len(in.CiphertextBlob) == 0 || len(in.CiphertextBlob) > 6144 {
		return "" // local-kms answers these itself
	}
	named := in.KeyId
	if op == "ReEncrypt" {
		named = in.SourceKeyId
	}
	if named == "" {
		return ""
	}
	// local-kms's ciphertext: len(ARN) (1 byte), ARN, key version (4), AES-GCM.
	blob := in.CiphertextBlob
	n := int(blob[0])
	if len(blob) < 1+n+4+12+16 {
		return "InvalidCiphertextException"
	}
	arn, err := s.resolve(r.Context(), tr, named)
	if err != nil || arn == "" {
		return "" // local-kms answers for a key it does not find
	}
	if string(blob[1:1+n]) != arn {
		return "IncorrectKeyException"
	}
	return ""
}

// resolve finds the ARN of a key id, key ARN, alias or alias ARN by asking
// local-kms (DescribeKey).
func (s *Server) resolve(ctx context.Context, tr http.RoundTripper, id string) (string, error) {
	if strings.HasPrefix(id, "arn:") && strings.Contains(id, ":key/") {
		return id, nil
	}
	s.mu.Lock()
	arn, ok := s.arns[id]
	s.mu.Unlock()
	if ok {
		return arn, nil
	}
	body, _ := json.Marshal(map[string]string{"KeyId": id})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://local-kms/", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.DescribeKey")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct{ KeyMetadata struct{ Arn string } }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return "", nil
	}
	if !strings.HasPrefix(id, "alias/") && !strings.Contains(id, ":alias/") {
		s.mu.Lock()
		s.arns[id] = out.KeyMetadata.Arn // aliases may move; key ids do not
		s.mu.Unlock()
	}
	return out.KeyMetadata.Arn, nil
}
