"""Processing widget wrappers (custom parameter widgets) live here."""
