"""The chat questions the benchmarks send (distinct, short, everyday), and a few for
warm-up."""

QUESTIONS = [
    "Tell me about your day.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in simple words.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
    "What makes a good friend?",
    "Summarize the plot of Cinderella.",
    "How do airplanes stay in the air?",
    "Suggest a name for a small bakery.",
    "What is the difference between weather and climate?",
    "Write two sentences about autumn.",
    "How does a bicycle work?",
    "What should I pack for a weekend hike?",
    "Explain what a computer program is.",
    "Tell me a fun fact about octopuses.",
    "Why do we need sleep?",
    "What are the colors of the rainbow?",
    "Give me a short motivational message.",
]
WARMUP_QUESTIONS = ["Say hello.", "Count to five.", "Name a fruit.", "Name a color."]
