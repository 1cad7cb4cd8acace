package alikms

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/alibabacloud-go/tea/tea"

	"rekey/providers/keys"
)

// APIError is an answer of Alibaba Cloud KMS reduced to what is safe to
// print: HTTP status, error code and request ID (for a support ticket).
// The server's message is dropped: for a signature mismatch it echoes the
// signed request, whose query holds Encrypt's plaintext.
type APIError struct {
	Status    int
	Code      string
	RequestID string
}

func (e *APIError) Error() string {
	s := "KMS answered"
	if e.Status != 0 {
		s += fmt.Sprintf(" HTTP %d", e.Status)
	}
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.RequestID != "" {
		s += " (request " + e.RequestID + ")"
	}
	return s
}

// op is what a call was for: the same answer means different things for
// a key lookup and for a ciphertext (Forbidden.KeyNotFound on Decrypt
// names the key inside the ciphertext, so the blob is bad, not the KEK).
type op int

const (
	opLookup op = iota // DescribeKey, the instance probe
	opWrap             // Encrypt, GenerateDataKey
	opUnwrap           // Decrypt, ReEncrypt
)

// Error codes, from the KMS API references: the shared gateway's common
// codes (help/doc-detail/69008, "Response structure") and Decrypt's
// (api-kms-2016-01-20-decrypt); the KMS instance API's common codes
// (developer-reference/common-error-codes-1); throttling from "Limits"
// (kms/support/limits): HTTP 429 Rejected.Throttling.
var (
	throttleCodes  = set("Rejected.Throttling", "Throttling", "Throttling.User", "Throttling.Api")
	transientCodes = set("InternalFailure", "InternalError", "ServiceUnavailable", "ServiceUnavailableTemporary",
		"SerivceUnavailableTemporary" /* sic, in the gateway's table */, "RequestTimeout")
	authCodes = set("InvalidAccessKeyId", "InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.Inactive",
		"Forbidden.AccessKey", "SignatureDoesNotMatch", "IncompleteSignature", "IllegalTimestamp",
		"InvalidTimeStamp.Expired", "SignatureNonceUsed", "InvalidSecurityToken.Expired",
		"InvalidSecurityToken.Malformed", "InvalidSecurityToken.MismatchWithAccessKey",
		"Forbidden.KmsServiceNotEnabled", "Forbidden.InDebt", "Forbidden.InDebtOverdue",
		"Forbidden.ProhibitedByRiskControl",
		// KMS instance API
		"Unauthorized", "SignatureNotMatch", "RequestTimeTooSkewed", "MissingParameter.AccessKeyId")
	deniedCodes = set("Forbidden.NoPermission", "Forbidden.RAM", "Forbidden",
		"Rejected.Disabled", "Rejected.PendingDeletion", "Rejetced.PendingDeletion", /* sic */
		"Rejected.PendingImport", "Rejected.Unavailable", "Rejected.Enabled")
	notFoundCodes  = set("Forbidden.KeyNotFound", "Forbidden.AliasNotFound", "EntityNotExist.Key", "EntityNotExist")
	mechanismCodes = set("UnsupportedOperation", "Rejected.UnsupportedOperation", "Unsupported.Origin",
		"Unsupported.Alias", "InvalidKeyUsage")
)

func set(s ...string) map[string]bool {
	m := make(map[string]bool, len(s))
	for _, v := range s {
		m[v] = true
	}
	return m
}

// classify turns an SDK error into rekey's: what failed, the sentinel the
// runner acts on and a hint. Nothing the server said but its status, code
// and request ID is kept.
func classify(what string, o op, err error) error {
	var se *tea.SDKError
	if !errors.As(err, &se) {
		return transport(what, err)
	}
	e := apiError(se)
	code := e.Code
	switch {
	case throttleCodes[code] || e.Status == 429:
		return keys.Retryable(fmt.Errorf("%s: %w: %w", what, keys.ErrThrottled, e))
	case transientCodes[code] || e.Status >= 500:
		return keys.Retryable(fmt.Errorf("%s: %w (a temporary failure: rekey retries it)", what, e))
	case authCodes[code] || e.Status == 401:
		return fmt.Errorf("%s: %w: %w (check the credentials: the AccessKey or ClientKey and its password, its expiry, and this machine's clock)", what, keys.ErrAuthFailed, e)
	case notFoundCodes[code] && o == opUnwrap:
		return fmt.Errorf("%s: %w: %w (the ciphertext names a key that does not exist: it is damaged, or was not wrapped here)", what, keys.ErrUnwrapFailed, e)
	case notFoundCodes[code] || e.Status == 404:
		return fmt.Errorf("%s: %w: %w (check the key ID or alias, the region and the endpoint)", what, keys.ErrKeyNotFound, e)
	case deniedCodes[code] || e.Status == 403 || e.Status == 409:
		return fmt.Errorf("%s: %w: %w (the key is disabled or pending deletion, or the RAM policy or application access point does not allow this operation)", what, keys.ErrNotPermitted, e)
	case mechanismCodes[code]:
		return fmt.Errorf("%s: %w: %w (rekey needs a symmetric ENCRYPT/DECRYPT key)", what, keys.ErrMechanism, e)
	case o == opUnwrap && e.Status >= 400:
		// InvalidParameter and kin: a damaged ciphertext, the wrong
		// encryption context, a ciphertext of another key.
		return fmt.Errorf("%s: %w: %w", what, keys.ErrUnwrapFailed, e)
	}
	return fmt.Errorf("%s: %w", what, e)
}

// apiError reads status, code and request ID out of an SDKError. The
// gateway SDK keeps the answer's JSON in Data (with statusCode added), the
// instance SDK a map of httpCode, requestId and hostId.
func apiError(se *tea.SDKError) *APIError {
	e := &APIError{Status: tea.IntValue(se.StatusCode), Code: tea.StringValue(se.Code)}
	var data struct {
		RequestID  string `json:"RequestId"`
		RequestId2 string `json:"requestId"`
		HTTPCode   int    `json:"httpCode"`
	}
	if se.Data != nil && json.Unmarshal([]byte(*se.Data), &data) == nil {
		e.RequestID = data.RequestID
		if e.RequestID == "" {
			e.RequestID = data.RequestId2
		}
		if e.Status == 0 {
			e.Status = data.HTTPCode
		}
	}
	if len(e.Code) > 128 {
		e.Code = e.Code[:128]
	}
	if len(e.RequestID) > 128 {
		e.RequestID = e.RequestID[:128]
	}
	return e
}

// transport classifies a failure below the API: no answer, a broken
// connection, a TLS refusal, an answer that does not parse. A url.Error's
// URL is dropped: the gateway SDK puts Encrypt's plaintext in the query.
func transport(what string, err error) error {
	var ue *url.Error
	switch {
	case errors.As(err, &ue):
		err = ue.Err // a timeout of the SDK's HTTP client lands here, retryable below
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", what, err) // the caller's context ended
	}
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) {
		return fmt.Errorf("%s: %w: TLS: %v (check endpoint= and, for a KMS instance, ca-source=)", what, keys.ErrAuthFailed, err)
	}
	var ne net.Error
	var dns *net.DNSError
	switch {
	case errors.As(err, &dns) && dns.IsNotFound:
		return fmt.Errorf("%s: %w: %v (check endpoint= and region=)", what, keys.ErrTokenNotFound, err)
	case errors.As(err, &ne), ue != nil:
		return keys.Retryable(fmt.Errorf("%s: %v", what, err))
	}
	msg := err.Error()
	if i := strings.IndexAny(msg, "\n{"); i >= 0 {
		msg = msg[:i] // parse errors of an answer may quote it
	}
	return keys.Retryable(fmt.Errorf("%s: %s (an unreadable answer: rekey retries it)", what, cut(msg)))
}
