// Package redact hides passwords in URLs, and in errors that quote a URL, before they
// reach a log, a status page or a message a user reads. The password becomes Mask;
// the user name stays, so "rejected user vigil" still makes sense next to it. It
// imports only the standard library; any package may import it.
package redact

import (
	"errors"
	"net/url"
	"strings"
)

// Mask is what a password is replaced with.
const Mask = "xxxxx"

// URL returns raw with the password in its userinfo replaced by Mask:
// rtsp://admin:secret@cam/stream becomes rtsp://admin:xxxxx@cam/stream. A URL with a
// user name only, or with no userinfo, comes back unchanged. A string that does not
// parse as a URL (a bad port, a stray %, a '/' in the password) is masked by
// position: whatever lies between the first ':' after "://" and the last '@' (more
// than the password when an '@' comes later in the path, never less).
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return unparsed(raw)
	}
	if u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); !has {
		return raw
	}
	u.User = url.UserPassword(u.User.Username(), Mask)
	return u.String()
}

// unparsed masks the password of a URL url.Parse refused, by position.
func unparsed(raw string) string {
	scheme := strings.Index(raw, "://")
	if scheme < 0 {
		return raw
	}
	start := scheme + len("://")
	at := strings.LastIndex(raw, "@")
	if at < start {
		return raw
	}
	colon := strings.Index(raw[start:at], ":")
	if colon < 0 {
		return raw
	}
	return raw[:start+colon+1] + Mask + raw[at:]
}

// Error returns err with every appearance of u's password in its message (as
// written, query-escaped or path-escaped) replaced by Mask, and the URL of a
// *url.Error redacted with URL (net/http's own "***" included). When u has no
// password it returns err itself. The result unwraps to err, so errors.Is and
// errors.As still see the cause: print the result, not what it wraps.
func Error(err error, u *url.URL) error {
	if err == nil || u == nil || u.User == nil {
		return err
	}
	pw, has := u.User.Password()
	if !has || pw == "" {
		return err
	}
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = strings.ReplaceAll(msg, ue.URL, URL(ue.URL))
	}
	for _, secret := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw)} {
		msg = strings.ReplaceAll(msg, secret, Mask)
	}
	return &redacted{msg: msg, err: err}
}

// redacted is an error whose message was redacted; it unwraps to the original.
type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.err }
