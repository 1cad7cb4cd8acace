package ibmkp

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"

	"rekey/providers/keys"
)

// Scheme is the URI scheme of Key Protect and HPCS root keys.
const Scheme = "ibmkp"

// DefaultIAMEndpoint is IBM Cloud IAM's token endpoint.
const DefaultIAMEndpoint = "https://iam.cloud.ibm.com/identity/token"

// DefaultAPIKeyEnv is where the API key is read from when a reference
// names no apikey-source (the variable IBM's own tools read).
const DefaultAPIKeyEnv = "IBMCLOUD_API_KEY"

const maxURIBytes = 4096

var (
	// Key IDs are UUIDs; aliases are letters, digits, '-' and '_' (Key
	// Protect allows 2 to 90 of them); instance IDs are UUIDs.
	idRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)
	regionRE = regexp.MustCompile(`^[a-z]{2}-[a-z0-9-]{2,30}$`)
	envRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// kpHost is a public Key Protect regional endpoint, which the
	// canonical form writes as its region.
	kpHost = regexp.MustCompile(`^([a-z]{2}-[a-z0-9-]{2,30})\.kms\.cloud\.ibm\.com$`)
)

// Ref is a parsed ibmkp reference:
//
//	ibmkp:region=<region>;instance=<instance id>;key=<key id>[?query]
//	ibmkp:endpoint=<https URL>;instance=<instance id>;key=<key id>[?query]
//
// The path names the key (its attributes in any order); the query
// configures how it is reached: apikey-source (env:VAR or file:/path; by
// default $IBMCLOUD_API_KEY), key-ring (sent as x-kms-key-ring) and
// iam-endpoint (the IAM token URL).
type Ref struct {
	Endpoint     string // service URL without a trailing slash
	Instance     string
	Key          string
	KeyRing      string
	IAMEndpoint  string
	APIKeySource string
}

// ParseURI parses an ibmkp reference. Unknown, repeated or malformed
// attributes are errors, so that a typo cannot select another key.
func ParseURI(s string) (Ref, error) {
	var r Ref
	if len(s) > maxURIBytes {
		return r, fmt.Errorf("%w: ibmkp reference longer than %d bytes", keys.ErrBadURI, maxURIBytes)
	}
	rest, ok := strings.CutPrefix(s, Scheme+":")
	if !ok {
		return r, fmt.Errorf("%w: not an ibmkp: reference (want e.g. %s)", keys.ErrBadURI, example)
	}
	path, query, _ := strings.Cut(rest, "?")
	if strings.Contains(path, "#") || strings.Contains(query, "#") {
		return r, fmt.Errorf("%w: ibmkp reference with a fragment", keys.ErrBadURI)
	}
	attrs := map[string]string{}
	for _, a := range strings.Split(path, ";") {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" || v == "" {
			return r, fmt.Errorf("%w: ibmkp path attribute %q is not name=value (want e.g. %s)", keys.ErrBadURI, a, example)
		}
		if _, dup := attrs[k]; dup {
			return r, fmt.Errorf("%w: ibmkp attribute %q given twice", keys.ErrBadURI, k)
		}
		attrs[k] = v
	}
	var err error
	for k, v := range attrs {
		switch k {
		case "region":
			if !regionRE.MatchString(v) {
				return r, fmt.Errorf("%w: ibmkp region=%q is not a region name such as us-south", keys.ErrBadURI, v)
			}
			r.Endpoint = "https://" + v + ".kms.cloud.ibm.com"
		case "endpoint":
			if r.Endpoint, err = serviceURL(v, false); err != nil {
				return r, fmt.Errorf("%w: ibmkp endpoint: %v", keys.ErrBadURI, err)
			}
		case "instance":
			r.Instance = v
		case "key":
			r.Key = v
		default:
			return r, fmt.Errorf("%w: unknown ibmkp attribute %q (path: region or endpoint, instance, key)", keys.ErrBadURI, k)
		}
	}
	switch {
	case attrs["region"] != "" && attrs["endpoint"] != "":
		return r, fmt.Errorf("%w: ibmkp reference names both region and endpoint; give one", keys.ErrBadURI)
	case r.Endpoint == "":
		return r, fmt.Errorf("%w: ibmkp reference names no region= or endpoint=", keys.ErrBadURI)
	case !idRE.MatchString(r.Instance):
		return r, fmt.Errorf("%w: ibmkp instance=%q: want the service instance ID (a UUID)", keys.ErrBadURI, r.Instance)
	case !idRE.MatchString(r.Key):
		return r, fmt.Errorf("%w: ibmkp key=%q: want the root key's ID", keys.ErrBadURI, r.Key)
	}
	if query == "" {
		return r, nil
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return r, fmt.Errorf("%w: ibmkp query: %v", keys.ErrBadURI, err)
	}
	for k, vs := range q {
		if len(vs) != 1 || vs[0] == "" {
			return r, fmt.Errorf("%w: ibmkp parameter %q must be given once, with a value", keys.ErrBadURI, k)
		}
		v := vs[0]
		switch k {
		case "apikey-source":
			if err := checkSource(v); err != nil {
				return r, err
			}
			r.APIKeySource = v
		case "key-ring":
			if !idRE.MatchString(v) {
				return r, fmt.Errorf("%w: ibmkp key-ring=%q is not a key ring ID", keys.ErrBadURI, v)
			}
			r.KeyRing = v
		case "iam-endpoint":
			if r.IAMEndpoint, err = serviceURL(v, true); err != nil {
				return r, fmt.Errorf("%w: ibmkp iam-endpoint: %v", keys.ErrBadURI, err)
			}
		case "apikey", "api-key", "apikey-value", "token":
			return r, fmt.Errorf("%w: ibmkp parameter %q: credentials never go in a key reference; name where to read the API key with apikey-source=env:VAR or apikey-source=file:/path", keys.ErrBadURI, k)
		default:
			return r, fmt.Errorf("%w: unknown ibmkp parameter %q (apikey-source, key-ring, iam-endpoint)", keys.ErrBadURI, k)
		}
	}
	return r, nil
}

const example = "ibmkp:region=us-south;instance=<instance id>;key=<key id>"

// serviceURL checks and normalises an endpoint: https (plain http only to
// this machine, where tests run a fake), no credentials, query or
// fragment. An IAM endpoint keeps its path (default /identity/token); a
// service endpoint has none.
func serviceURL(s string, iam bool) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL", s)
	}
	host := strings.ToLower(u.Hostname())
	switch {
	case u.Scheme == "http" && isLoopback(host):
	case u.Scheme != "https":
		return "", fmt.Errorf("%q: want https:// (bearer tokens are sent to it)", s)
	}
	switch {
	case host == "" || u.Opaque != "":
		return "", fmt.Errorf("%q has no host", s)
	case u.User != nil:
		return "", fmt.Errorf("a URL with user information: credentials never go in a key reference")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("%q has a query or fragment", s)
	}
	u.Host = strings.ToLower(u.Host)
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	if iam {
		if path == "" {
			path = "/identity/token"
		}
	} else if path != "" {
		return "", fmt.Errorf("%q has a path; give the service's base URL (rekey adds /api/v2/keys/...)", s)
	}
	if strings.ContainsAny(u.Host+path, ";?#") {
		return "", fmt.Errorf("%q: ';', '?' and '#' cannot appear in it", s)
	}
	return u.Scheme + "://" + u.Host + path, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func checkSource(src string) error {
	switch {
	case strings.HasPrefix(src, "env:") && envRE.MatchString(src[len("env:"):]):
		return nil
	case strings.HasPrefix(src, "file:") && len(src) > len("file:"):
		return nil
	}
	// The value is not repeated: a malformed source may be the key itself.
	return fmt.Errorf("%w: ibmkp apikey-source: want env:VAR or file:/path (the value given is not shown, in case it is the API key itself)", keys.ErrBadURI)
}

// Canonical names the key and nothing else: what DEK tables record. A
// public Key Protect endpoint is written as its region, so that region=
// and endpoint= spellings of one key compare equal.
func (r Ref) Canonical() string {
	loc := "endpoint=" + r.Endpoint
	if h, ok := strings.CutPrefix(r.Endpoint, "https://"); ok {
		if m := kpHost.FindStringSubmatch(h); m != nil {
			loc = "region=" + m[1]
		}
	}
	return Scheme + ":" + loc + ";instance=" + r.Instance + ";key=" + r.Key
}

// custodian is the service instance at its endpoint: rate limits are
// shared by every key of an instance.
func (r Ref) custodian() string { return Scheme + "|" + r.Endpoint + "|" + r.Instance }

func (r Ref) keyRef() keys.Ref {
	c := r.Canonical()
	return keys.Ref{Scheme: Scheme, Canonical: c, Redacted: c, Custodian: r.custodian()}
}

func parseRef(uri string) (keys.Ref, error) {
	r, err := ParseURI(uri)
	if err != nil {
		return keys.Ref{}, err
	}
	return r.keyRef(), nil
}
