"""Dom0: the login-free root shell on the serial line and its `xl` toolstack."""
