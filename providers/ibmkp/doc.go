// Package ibmkp is rekey's custodian for root keys in IBM Key Protect and
// IBM Hyper Protect Crypto Services (HPCS), which serve the same key
// management REST API: a DEK is wrapped, unwrapped and rewrapped by
// POST /api/v2/keys/<id>/actions/{wrap,unwrap,rewrap} against the service
// instance named in the bluemix-instance header, with an IAM bearer token.
// It registers the URI scheme "ibmkp" and the wrap mechanism "ibm-kp".
//
// # References
//
//	ibmkp:region=us-south;instance=<instance id>;key=<key id>?apikey-source=env:IBMCLOUD_API_KEY
//	ibmkp:endpoint=https://<instance id>.api.us-south.hs-crypto.appdomain.cloud;instance=<instance id>;key=<key id>
//
// region= is Key Protect's public endpoint https://<region>.kms.cloud.ibm.com;
// endpoint= names any other (HPCS, a private endpoint). Query parameters:
// apikey-source (env:VAR or file:/path), key-ring (sent as x-kms-key-ring;
// optional, it spares the service a search) and iam-endpoint (default
// https://iam.cloud.ibm.com/identity/token). The canonical form, which DEK
// tables record, is the path alone, with a public endpoint written as its
// region; the custodian (rate limits, same-custodian rewrap) is the
// instance at its endpoint. Plain http is accepted only to a loopback
// address, where tests run a fake.
//
// # Credentials
//
// An IBM Cloud API key, read once at Open from apikey-source or else from
// $IBMCLOUD_API_KEY, is exchanged at the IAM token endpoint
// (grant_type urn:ibm:params:oauth:grant-type:apikey) for a bearer token.
// The token is shared by every KEK using that key, renewed once 80% of its
// lifetime (expires_in) has passed, and fetched anew once if the service
// answers 401 to it. The API key and tokens appear in no error, log line
// or printed value (Secret prints ***); IAM and Key Protect messages are
// not copied into errors, only their error codes and the correlation-id
// rekey sends with each request.
//
// # Binding
//
// A keys.Binding becomes Key Protect's AAD list (see AAD): "rekey:dek_id=<id>",
// then "rekey:ctx:<k>=<v>" for each context entry by key (both sides
// form-encoded), then Binding.AAD unchanged. Another tool unwraps a DEK
// rekey wrapped by sending the same list; a DEK another tool wrapped with
// an AAD list is imported with that list as Binding.AAD. The wrapped key a
// DEK table stores is Key Protect's ciphertext string, byte for byte.
//
// # Rotation and rewrap
//
// After the root key is rotated, unwrap of an older ciphertext still works
// and also answers a ciphertext under the latest key version. Unwrap (the
// keys.KEK method) cannot hand that back, so UnwrapLatest returns it, and
// Rewrap (keys.Rewrapper, Key Protect's rewrap action) moves a DEK to the
// latest version without it leaving the service. Both work within one root
// key only: CanRewrapTo is true for the same key of the same instance at
// the same endpoint, with the same binding. Moving DEKs to another key or
// another instance, as the HPCS runbook's beta-to-production migration
// does, is an unwrap in the old instance and a wrap in the new one, which
// rekey does itself. RewrapResult.Verified is false.
//
// # Rate
//
// IBM publishes no request quota for Key Protect or HPCS key actions (not
// in Key Protect's docs on wrapping, unwrapping, rewrapping, error messages
// or its FAQs, nor in HPCS's performance FAQ). DefaultRate (50 requests per
// second per instance) is a conservative choice, not a published number:
// throttled requests (HTTP 429) are retryable, so a run at a too-high
// --hsm-rate slows down instead of failing.
//
// # Errors
//
// 404 is keys.ErrKeyNotFound; 401 and 403 keys.ErrAuthFailed (as is an API
// key IAM refuses); 409 and 410 (a disabled, expired or deleted key) and
// KEY_EXPIRED_ERR keys.ErrNotPermitted; 400 and 422 on unwrap or rewrap
// (INVALID_FIELD_ERR, UNPROCESSABLE_CIPHERTEXT_ERR) keys.ErrUnwrapFailed;
// 429 keys.ErrThrottled and 5xx, timeouts and connection failures are
// retryable. Nothing is retried here except the single token refresh on a
// 401: keys.WithRetry does that for every scheme.
//
// # Why plain net/http
//
// The official client, github.com/IBM/keyprotect-go-client, has wrap and
// unwrap but no rewrap; it retries 429 and 5xx itself with package-global
// settings (four retries, up to 30 s apart) that would stack on rekey's
// policy; its IAM token fetch takes no context and builds its own HTTP
// client; its default transport disables keep-alives; and its errors carry
// the service's messages. The four requests rekey needs are a few dozen
// lines over net/http.
//
// Limits: an AAD element is at most 255 characters, so a dek_id longer
// than 242 characters cannot be bound; no Binding.AAD element may start
// with "rekey:". A key alias in key= names the same key as its ID but
// compares as another reference. GenerateDEK costs one wrap request (the
// wrapped copy is discarded); jobs that mint many DEKs may prefer
// dek_source: crypto-rand. Plaintext DEKs pass through Go's HTTP and TLS
// buffers, which are not zeroed. Tested against kpfake, a fake of the
// service, not against IBM Cloud.
package ibmkp
