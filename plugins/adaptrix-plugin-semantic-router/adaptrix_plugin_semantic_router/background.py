"""
Everyday requests that no specialised adapter is for: the "none of them" class's default examples.

The classifier needs to see what a request for the plain base model looks like,
not only each adapter's counter-examples. These are deliberately generic (facts,
advice, writing, how-to, small talk) and in several languages. A background
request too close to one of an adapter's own examples (cosine >= ``OVERLAP``) is
dropped when the router is fitted, so a library with, say, a cooking adapter
does not learn that recipes belong to nobody.
"""

from __future__ import annotations


OVERLAP = 0.8
"""A background request at least this similar to an adapter's example is left out of the fit."""

BACKGROUND: tuple[str, ...] = (
    # facts and explanations
    "How far is the Moon from the Earth?",
    "Why do leaves change colour in autumn?",
    "What is the largest desert in the world?",
    "How does the immune system fight infections?",
    "Explain how vaccines work.",
    "What causes earthquakes?",
    "Who painted the ceiling of the Sistine Chapel?",
    "When did the Second World War end?",
    "What is inflation and why does it happen?",
    "How do airplanes stay in the air?",
    "What is the speed of light?",
    "How do bees make honey?",
    "What is machine learning?",
    "Why do we dream?",
    "Which is the longest river in South America?",
    "How does a refrigerator keep food cold?",
    # advice and how-to
    "How can I stop procrastinating?",
    "What is a healthy breakfast?",
    "How do I remove a coffee stain from a shirt?",
    "Give me tips for a job interview.",
    "How should I prepare for a marathon?",
    "What houseplants are easy to keep alive?",
    "How do I ask my boss for a raise?",
    "What is the best way to save for retirement?",
    "How do I change a bicycle tyre?",
    "How long should I boil an egg?",
    "How can I make my home more energy efficient?",
    "What should I do if my laptop will not turn on?",
    # writing and creativity
    "Write a short poem about the rain.",
    "Write a thank-you email to a colleague.",
    "Tell me a joke about computers.",
    "Help me write a toast for my sister's wedding.",
    "Suggest three names for a coffee shop.",
    "Write a limerick about a lazy dog.",
    "Draft a polite complaint about a late delivery.",
    "Tell me a bedtime story about a dragon.",
    # programming and tools
    "How do I reverse a list in Python?",
    "What is the difference between a process and a thread?",
    "Explain recursion with an example.",
    "How do I undo the last git commit?",
    "Why is my website loading slowly?",
    # opinions, plans and small talk
    "What is a good movie to watch tonight?",
    "Plan a three-day trip to Rome.",
    "What are some fun things to do with kids on a rainy day?",
    "Hello, how are you today?",
    "What do you think about electric cars?",
    "Recommend a board game for four players.",
    "Which is better for a beginner, guitar or piano?",
    # other languages
    "Wie funktioniert eine Wärmepumpe?",
    "Was kann ich heute Abend kochen?",
    "Erzähl mir einen Witz.",
    "¿Por qué el cielo es azul?",
    "¿Qué libro me recomiendas para el verano?",
    "¿Cómo puedo dormir mejor?",
    "Pourquoi la mer est-elle bleue ?",
    "Quel film me conseilles-tu ce soir ?",
    "Comment apprendre à jouer du piano ?",
    "Come si prepara il risotto?",
    "Qual è la montagna più alta d'Europa?",
    "Como faço para aprender a programar?",
    "Wat is de hoofdstad van België?",
    "Jak się masz?",
)


__all__ = ["BACKGROUND", "OVERLAP"]
