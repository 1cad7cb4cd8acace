package alikms

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"

	"rekey/providers/keys"
)

// ref is a parsed alikms: or alikms-instance: reference. Identity (key,
// region, endpoint) may be written as ;name=value path attributes or as
// query parameters; credential references only in the query.
type ref struct {
	scheme   string
	key      string // key ID, alias/<name> or key ARN
	region   string // gateway only
	endpoint string // host[:port], without scheme; "" = the SDK's regional endpoint
	plain    bool   // endpoint is http:// (loopback only)

	credentialSource string // gateway: file:/path of an AccessKey JSON
	clientKeySource  string // instance: env:VAR or file:/path of the ClientKey JSON
	passwordSource   string // instance: env:VAR or file:/path of the ClientKey password
	caSource         string // instance: env:VAR or file:/path of the instance CA (PEM)
	insecure         bool   // instance: skip TLS verification (loopback only)
}

const maxRefBytes = 2048

var (
	keyPattern    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_./:-]{0,255}$`)
	regionPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// params each scheme takes, and which of them name the key (path or
// query) rather than a credential (query only).
var params = map[string]map[string]bool{
	GatewayScheme:  {"region": true, "endpoint": true, "credential-source": false},
	InstanceScheme: {"endpoint": true, "client-key-source": false, "password-source": false, "ca-source": false, "insecure": false},
}

func parseRef(scheme, s string) (ref, error) {
	r := ref{scheme: scheme}
	if len(s) > maxRefBytes {
		return r, fmt.Errorf("%w: %s reference longer than %d bytes", keys.ErrBadURI, scheme, maxRefBytes)
	}
	rest, ok := strings.CutPrefix(s, scheme+":")
	if !ok {
		return r, fmt.Errorf("%w: not a %s: reference", keys.ErrBadURI, scheme)
	}
	rest, _, _ = strings.Cut(rest, "#")
	path, query, _ := strings.Cut(rest, "?")
	attrs := strings.Split(path, ";")
	r.key = attrs[0]
	if !keyPattern.MatchString(r.key) {
		return r, fmt.Errorf("%w: %s:%q is not a key ID, alias/<name> or key ARN (e.g. %s)", keys.ErrBadURI, scheme, cut(r.key), example(scheme))
	}
	seen := map[string]bool{}
	set := func(name, v string, inPath bool) error {
		ident, known := params[scheme][name]
		switch {
		case !known:
			return fmt.Errorf("%w: %s takes no parameter %q (it takes %s)", keys.ErrBadURI, scheme, cut(name), strings.Join(paramNames(scheme), ", "))
		case inPath && !ident:
			return fmt.Errorf("%w: %s is a credential reference: put it in the query (?%s=...), not in the key's path", keys.ErrBadURI, name, name)
		case seen[name]:
			return fmt.Errorf("%w: %s given twice", keys.ErrBadURI, name)
		}
		seen[name] = true
		switch name {
		case "region":
			if !regionPattern.MatchString(v) {
				return fmt.Errorf("%w: region=%q is not a region ID (e.g. cn-hangzhou)", keys.ErrBadURI, cut(v))
			}
			r.region = v
		case "endpoint":
			ep, plain, err := parseEndpoint(v)
			if err != nil {
				return err
			}
			r.endpoint, r.plain = ep, plain
		case "insecure":
			if v != "" && v != "true" {
				return fmt.Errorf("%w: insecure takes no value", keys.ErrBadURI)
			}
			r.insecure = true
		default:
			if !strings.HasPrefix(v, "env:") && !strings.HasPrefix(v, "file:") {
				return fmt.Errorf("%w: %s must be env:VAR or file:/path (the secret itself never goes in a key reference)", keys.ErrBadURI, name)
			}
			switch name {
			case "credential-source":
				if !strings.HasPrefix(v, "file:") {
					return fmt.Errorf("%w: credential-source must be file:/path (from the environment, the SDK's own ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET are read)", keys.ErrBadURI)
				}
				r.credentialSource = v
			case "client-key-source":
				r.clientKeySource = v
			case "password-source":
				r.passwordSource = v
			case "ca-source":
				r.caSource = v
			}
		}
		return nil
	}
	for _, a := range attrs[1:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return r, fmt.Errorf("%w: path attribute %q is not name=value", keys.ErrBadURI, cut(a))
		}
		dv, err := url.PathUnescape(v)
		if err != nil {
			return r, fmt.Errorf("%w: %s: %v", keys.ErrBadURI, cut(k), err)
		}
		if err := set(k, dv, true); err != nil {
			return r, err
		}
	}
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return r, fmt.Errorf("%w: %s query does not parse", keys.ErrBadURI, scheme)
		}
		for k, vs := range q {
			if len(vs) != 1 {
				return r, fmt.Errorf("%w: %s given twice", keys.ErrBadURI, cut(k))
			}
			if err := set(k, vs[0], false); err != nil {
				return r, err
			}
		}
	}
	switch {
	case scheme == GatewayScheme && r.region == "":
		return r, fmt.Errorf("%w: %s needs region= (e.g. %s)", keys.ErrBadURI, scheme, example(scheme))
	case scheme == InstanceScheme && r.endpoint == "":
		return r, fmt.Errorf("%w: %s needs endpoint= (the instance's <kst-id>.cryptoservice.kms.aliyuncs.com; e.g. %s)", keys.ErrBadURI, scheme, example(scheme))
	case scheme == InstanceScheme && r.plain:
		return r, fmt.Errorf("%w: the KMS instance API is HTTPS only (for a test server use ca-source= or insecure)", keys.ErrBadURI)
	case r.insecure && !loopback(r.endpoint):
		return r, fmt.Errorf("%w: insecure is for test servers on 127.0.0.1 or localhost only; give the instance CA with ca-source=file:/path/PrivateKmsCA_kst-....pem", keys.ErrBadURI)
	}
	return r, nil
}

// parseEndpoint takes host[:port], https://host[:port] or, for a test
// server on the loopback interface, http://host:port.
func parseEndpoint(v string) (host string, plain bool, err error) {
	rest := v
	switch {
	case strings.HasPrefix(v, "https://"):
		rest = strings.TrimPrefix(v, "https://")
	case strings.HasPrefix(v, "http://"):
		rest, plain = strings.TrimPrefix(v, "http://"), true
	}
	rest = strings.TrimSuffix(rest, "/")
	u, perr := url.Parse("https://" + rest)
	if perr != nil || u.Host != rest || u.Hostname() == "" || u.User != nil {
		return "", false, fmt.Errorf("%w: endpoint= is not host[:port] (e.g. kms-vpc.cn-hangzhou.aliyuncs.com)", keys.ErrBadURI)
	}
	if plain && !loopback(rest) {
		return "", false, fmt.Errorf("%w: endpoint=%q: plain http is for test servers on 127.0.0.1 or localhost only", keys.ErrBadURI, cut(v))
	}
	return strings.ToLower(rest), plain, nil
}

func loopback(hostport string) bool {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}

// canonical names the key and where it lives, nothing else: the gateway
// key by ID and region (plus the endpoint when it is not one of Alibaba
// Cloud's own, such as a test server: the same key over the VPC and the
// public endpoint is one key), the instance key by ID and instance.
func (r ref) canonical() string {
	var b strings.Builder
	b.WriteString(r.scheme + ":" + r.key)
	if r.region != "" {
		b.WriteString(";region=" + r.region)
	}
	if r.endpoint != "" && (r.scheme == InstanceScheme || !aliyunHost(r.endpoint)) {
		b.WriteString(";endpoint=")
		if r.plain {
			b.WriteString("http://")
		}
		b.WriteString(r.endpoint)
	}
	return b.String()
}

// custodian is who enforces the rate limit: the account's gateway quota in
// a region, or one KMS instance.
func (r ref) custodian() string {
	if r.scheme == InstanceScheme {
		return InstanceScheme + "|" + r.endpoint
	}
	c := GatewayScheme + "|" + r.region
	if r.endpoint != "" && !aliyunHost(r.endpoint) {
		c += "|" + r.endpoint
	}
	return c
}

func aliyunHost(hostport string) bool {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	return strings.HasSuffix(h, ".aliyuncs.com")
}

func (r ref) keysRef() keys.Ref {
	c := r.canonical()
	return keys.Ref{Scheme: r.scheme, Canonical: c, Redacted: c, Custodian: r.custodian()}
}

func paramNames(scheme string) []string {
	var out []string
	for _, n := range []string{"region", "endpoint", "credential-source", "client-key-source", "password-source", "ca-source", "insecure"} {
		if _, ok := params[scheme][n]; ok {
			out = append(out, n)
		}
	}
	return out
}

func example(scheme string) string {
	if scheme == InstanceScheme {
		return InstanceExample
	}
	return GatewayExample
}

// cut shortens user input echoed in an error.
func cut(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
