"""Tables, figures and the colours they share."""
