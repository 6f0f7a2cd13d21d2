// Package camurl reads a camera's url (rtsp://, file://, v4l2://, pattern://) into the
// kind of source and its options; it is pure Go, so agent/config can check URLs without
// linking the OpenCV that package capture opens them with.
package camurl
