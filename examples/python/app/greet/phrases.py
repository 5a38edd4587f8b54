PHRASES = {"en": "Hello", "fr": "Bonjour", "de": "Hallo", "es": "Hola"}
