package awskms

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"rekey/providers/keys"
)

// Scheme is the URI scheme this package registers.
const Scheme = "awskms"

// Ref is a parsed awskms: key reference.
type Ref struct {
	// Key names the KMS key as AWS takes it in KeyId: a key ARN, an alias
	// ARN, "alias/NAME" or a key id.
	Key string
	// Region is the key's region: from its ARN, the region parameter, or
	// AWS_REGION / AWS_DEFAULT_REGION; empty when none says (the SDK then
	// takes it from the profile at Open).
	Region string
	// Account is the AWS account, when an ARN names it.
	Account string
	// Endpoint overrides the KMS endpoint (a VPC endpoint, a test server).
	Endpoint string
	// Profile names a profile of the shared config files.
	Profile string
}

var (
	// A KMS key id: a UUID, or a multi-Region key's "mrk-" and 32 hex digits.
	keyIDRe  = regexp.MustCompile(`^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|mrk-[0-9a-fA-F]{32})$`)
	aliasRe  = regexp.MustCompile(`^alias/[a-zA-Z0-9:/_-]{1,250}$`)
	regionRe = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)
	arnRe    = regexp.MustCompile(`^arn:(aws[a-zA-Z-]*):kms:([a-z0-9-]+):([0-9]{12}):(key/[^/]+|alias/.+)$`)
	// Profile names are references to a file's section, not secrets.
	profileRe = regexp.MustCompile(`^[A-Za-z0-9_.@+-]{1,128}$`)
)

// Params are the query parameters an awskms: reference accepts. None
// carries a credential: those come from the SDK's default chain.
var Params = []string{"region", "endpoint", "profile"}

// ParseRef parses an awskms: reference:
//
//	awskms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//	awskms:arn:aws:kms:eu-west-1:111122223333:alias/rekey-prod
//	awskms:alias/rekey-prod?region=eu-west-1
//	awskms:1234abcd-12ab-34cd-56ef-1234567890ab?region=eu-west-1&profile=prod
//	awskms:eu-west-1:alias/rekey-prod          (the canonical form of the above)
//
// with optional endpoint=http(s)://host[:port] and profile=NAME.
func ParseRef(uri string) (Ref, error) {
	bad := func(format string, a ...any) (Ref, error) {
		return Ref{}, fmt.Errorf("%w: %s: %s (expected e.g. %s)", keys.ErrBadURI, redactRaw(uri), fmt.Sprintf(format, a...), example)
	}
	rest, ok := strings.CutPrefix(uri, Scheme+":")
	if !ok {
		return bad("not an %s: reference", Scheme)
	}
	if len(uri) > 2048 {
		return bad("reference is %d bytes long", len(uri))
	}
	key, query, _ := strings.Cut(rest, "?")
	if strings.Contains(query, "#") || strings.Contains(key, "#") {
		return bad("a fragment (#) is not allowed")
	}
	var r Ref
	q, err := url.ParseQuery(query)
	if err != nil {
		return bad("query: %v", err)
	}
	for name, vs := range q {
		if len(vs) != 1 {
			return bad("parameter %s given %d times", name, len(vs))
		}
		v := vs[0]
		switch name {
		case "region":
			if !regionRe.MatchString(v) {
				return bad("region %q is not an AWS region name", v)
			}
			r.Region = v
		case "endpoint":
			if r.Endpoint, err = checkEndpoint(v); err != nil {
				return bad("endpoint: %v", err)
			}
		case "profile":
			if !profileRe.MatchString(v) {
				return bad("profile %q is not a profile name", v)
			}
			r.Profile = v
		default:
			return bad("unknown parameter %q (takes %s; credentials come from the SDK's default chain, never from the reference)", name, strings.Join(Params, ", "))
		}
	}
	switch {
	case strings.HasPrefix(key, "arn:"):
		m := arnRe.FindStringSubmatch(key)
		if m == nil {
			return bad("%q is not a KMS key or alias ARN (arn:aws:kms:REGION:ACCOUNT:key/ID or :alias/NAME)", key)
		}
		if kid, isKey := strings.CutPrefix(m[4], "key/"); isKey && !keyIDRe.MatchString(kid) {
			return bad("%q is not a KMS key id", kid)
		}
		if r.Region != "" && r.Region != m[2] {
			return bad("region=%s contradicts the ARN's region %s", r.Region, m[2])
		}
		r.Key, r.Region, r.Account = key, m[2], m[3]
		return r, nil
	case !aliasRe.MatchString(key) && !keyIDRe.MatchString(key):
		// The canonical form: REGION:KEY.
		region, k, ok := strings.Cut(key, ":")
		if !ok || !regionRe.MatchString(region) || !aliasRe.MatchString(k) && !keyIDRe.MatchString(k) {
			return bad("%q is not a key ARN, alias/NAME or key id", key)
		}
		if r.Region != "" && r.Region != region {
			return bad("region=%s contradicts the reference's region %s", r.Region, region)
		}
		key, r.Region = k, region
	}
	r.Key = key
	if r.Region == "" {
		r.Region = envRegion()
	}
	return r, nil
}

const example = "awskms:alias/rekey-prod?region=eu-west-1"

// envRegion is the region the SDK takes from the environment, if any.
func envRegion() string {
	for _, v := range []string{"AWS_REGION", "AWS_DEFAULT_REGION"} {
		if r := os.Getenv(v); regionRe.MatchString(r) {
			return r
		}
	}
	return ""
}

// checkEndpoint accepts an http(s) base URL without credentials, query or
// path, and returns it normalised.
func checkEndpoint(v string) (string, error) {
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return "", err
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("%q: want http:// or https://", u.Redacted())
	case u.User != nil:
		return "", fmt.Errorf("%q carries credentials; they come from the SDK's default chain", u.Redacted())
	case u.Host == "" || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "":
		return "", fmt.Errorf("%q: want scheme://host[:port] only", u.Redacted())
	}
	return u.Scheme + "://" + strings.ToLower(u.Host), nil
}

// Canonical names the key and its region only: no endpoint or profile,
// which say how to reach the key, not which key it is.
func (r Ref) Canonical() string {
	if strings.HasPrefix(r.Key, "arn:") || r.Region == "" {
		return Scheme + ":" + r.Key
	}
	return Scheme + ":" + r.Region + ":" + r.Key
}

// Custodian is AWS KMS in the key's region and account: the unit AWS
// meters request quotas by. The endpoint is left out on purpose: a VPC or
// FIPS endpoint reaches the same quota.
func (r Ref) Custodian() string { return Scheme + "|" + r.Region + "|" + r.Account }

func parseKeysRef(uri string) (keys.Ref, error) {
	r, err := ParseRef(uri)
	if err != nil {
		return keys.Ref{}, err
	}
	c := r.Canonical()
	return keys.Ref{Scheme: Scheme, Canonical: c, Redacted: c, Custodian: r.Custodian()}, nil
}

// redactRaw is a reference that did not parse, cut before its query.
func redactRaw(uri string) string {
	if len(uri) > 256 {
		uri = uri[:256] + "..."
	}
	if i := strings.IndexAny(uri, "?#"); i >= 0 {
		return uri[:i] + "?..."
	}
	return uri
}
